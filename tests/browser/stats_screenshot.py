#!/usr/bin/env python3
"""Screenshots of a tenant's statistics page (/ui/stats) in Chromium, at a
desktop and a phone width, for the end-to-end test with a real guest:

    stats_screenshot.py BASE_URL USER PASSWORD OUT_DIR

Logs in through the login form, opens /ui/stats?range=1h, checks that the
disk and requests graphs each draw a line (server-side SVG), and saves
OUT_DIR/stats-desktop.png and OUT_DIR/stats-phone.png. Exits 1 otherwise."""

import os
import sys
import tempfile

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait


def main():
    base, user, password, out = sys.argv[1:5]
    os.makedirs(out, exist_ok=True)
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--disable-dev-shm-usage", f"--user-data-dir={tempfile.mkdtemp(prefix='hostd-chromium-')}",
              "--window-size=1280,1000"]:
        opts.add_argument(a)
    d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        d.get(base + "/ui/login")
        d.find_element(By.NAME, "username").send_keys(user)
        d.find_element(By.NAME, "password").send_keys(password)
        d.find_element(By.CSS_SELECTOR, "#login-form button[type=submit]").click()
        WebDriverWait(d, 20).until(lambda d: "/ui/hosting" in d.current_url)
        d.get(base + "/ui/stats?range=1h")
        for g in ["disk", "requests", "cpu"]:
            lines = d.find_elements(By.CSS_SELECTOR, f"#graph-{g} svg polyline")
            if not lines:
                print(f"stats page: the {g} graph draws no line", file=sys.stderr)
                return 1
        latest = {g: d.find_element(By.CSS_SELECTOR, f"#graph-{g} .latest").text
                  for g in ["cpu", "memory", "disk", "requests"]}
        print("stats page, newest values:", latest)
        d.set_window_size(1280, 2200)
        d.save_screenshot(os.path.join(out, "stats-desktop.png"))
        d.set_window_size(390, 2600)
        d.save_screenshot(os.path.join(out, "stats-phone.png"))
        return 0
    finally:
        d.quit()


if __name__ == "__main__":
    sys.exit(main())
