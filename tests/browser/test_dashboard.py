#!/usr/bin/env python3
"""Browser test of the dashboard: a real Chromium (Debian's chromium and
chromium-driver, driven by Selenium) against a real hostd (examples/ui_harness:
API + running reconciler, real Postgres and nginx, libvirt's test driver,
stand-in guests). It signs up, logs out and in, creates a hosting and watches
it reach Ready on the page without a reload (Server-Sent Events), stops and
starts it, reads the console page, checks the admin page, proves that a
cross-site form post without the CSRF token is refused and changes nothing,
and deletes the hosting. Every page is screenshotted into $ARTIFACTS.

Usage: test_dashboard.py HARNESS_BINARY
"""
import http.server
import json
import os
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

ARTIFACTS = os.environ.get("ARTIFACTS", "target/artifacts/browser")
READY_TIMEOUT = 120


def log(msg):
    print(f"[browser {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Harness:
    def __init__(self, binary):
        self.proc = subprocess.Popen([binary], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(os.path.join(ARTIFACTS, "hostd.log"), "w"))
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit("the harness did not start (see hostd.log)")
        info = json.loads(line)
        self.url, self.sites_url = info["url"], info["sites_url"]
        self.admin = (info["admin_user"], info["admin_password"])

    def stop(self):
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=20)
        except Exception:
            self.proc.kill()


def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--disable-dev-shm-usage", f"--user-data-dir={tempfile.mkdtemp(prefix='hostd-chromium-')}",
              "--window-size=1280,1000"]:
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


class Attacker(http.server.BaseHTTPRequestHandler):
    """A page on another origin (another port of 127.0.0.1: same site, so the
    SameSite=Strict cookie *is* sent; only the CSRF defences stand)."""
    target = ""

    def do_GET(self):
        body = f"""<!doctype html><title>Free prizes</title>
<form method="post" action="{self.target}/ui/hosting/power">
<input type="hidden" name="running" value="false">
<button id="go" type="submit">Claim your prize</button></form>""".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def main():
    os.makedirs(ARTIFACTS, exist_ok=True)
    for f in os.listdir(ARTIFACTS):
        if f.endswith((".png", ".html")):
            os.remove(os.path.join(ARTIFACTS, f))
    h = Harness(sys.argv[1])
    d = browser()
    wait = WebDriverWait(d, READY_TIMEOUT, poll_frequency=0.2)
    shots = []

    def shot(name):
        p = os.path.join(ARTIFACTS, f"{len(shots) + 1:02d}-{name}.png")
        d.save_screenshot(p)
        shots.append(p)

    def phase():
        return d.find_element(By.ID, "phase").text

    def fill(name, value):
        e = d.find_element(By.NAME, name)
        e.clear()
        e.send_keys(value)

    def login(user, password):
        d.get(h.url + "/ui/login")
        fill("username", user)
        fill("password", password)
        d.find_element(By.CSS_SELECTOR, "#login-form button[type=submit]").click()
        wait.until(lambda d: "/ui/hosting" in d.current_url)

    def logout():
        d.find_element(By.ID, "logout").click()
        wait.until(lambda d: d.current_url.endswith("/ui/login"))

    def wait_phase(want):
        wait.until(lambda d: phase() == want and
                   d.find_element(By.ID, "live").get_attribute("data-converged") == "true")

    try:
        user, password = "browser-user", "correct horse battery"
        log(f"hostd at {h.url}")
        d.get(h.url + "/")
        assert d.current_url.endswith("/ui/login"), d.current_url
        # Sign up.
        d.get(h.url + "/ui/signup")
        fill("email", "browser@example.com")
        fill("username", user)
        fill("password", password)
        shot("signup")
        d.find_element(By.CSS_SELECTOR, "#signup-form button[type=submit]").click()
        wait.until(lambda d: d.find_elements(By.ID, "create-form"))
        assert d.find_element(By.ID, "who").text == user
        cookies = {c["name"]: c for c in d.get_cookies()}
        s = cookies["hostd_session"]
        assert s["httpOnly"] and s["sameSite"] == "Strict", s
        assert d.execute_script("return document.cookie") == "", "a cookie is readable by script"
        # Log out, log in.
        logout()
        d.find_element(By.NAME, "username").send_keys(user)
        d.find_element(By.NAME, "password").send_keys("wrong password!")
        d.find_element(By.CSS_SELECTOR, "#login-form button[type=submit]").click()
        wait.until(lambda d: d.find_elements(By.ID, "error"))
        assert "incorrect" in d.find_element(By.ID, "error").text
        shot("login-refused")
        login(user, password)
        shot("create-form")

        # Create; watch it reach Ready without reloading.
        kd = tempfile.mkdtemp()
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{kd}/k"], check=True)
        pub = open(f"{kd}/k.pub").read().strip()
        Select(d.find_element(By.NAME, "size")).select_by_value("1:512")
        d.find_element(By.NAME, "ssh_key").send_keys(pub)
        t0 = time.time()
        d.find_element(By.ID, "create").click()
        wait.until(lambda d: d.find_elements(By.ID, "live"))
        d.execute_script("window.__noReload = 42")
        first = phase()
        log(f"created: phase {first}")
        shot("provisioning")
        wait_phase("Ready")
        log(f"Ready on the page after {time.time() - t0:.1f} s, without a reload")
        assert d.execute_script("return window.__noReload") == 42, "the page was reloaded"
        assert d.find_element(By.ID, "progress").get_attribute("value") == "100"
        site = d.find_element(By.ID, "web-url").get_attribute("href")
        ssh = d.find_element(By.ID, "ssh-cmd").text
        assert site.startswith(h.sites_url) and ssh.startswith("ssh "), (site, ssh)
        reasons = [e.text for e in d.find_elements(By.CSS_SELECTOR, "#events b")]
        assert "Ready" in reasons and "Created" in reasons, reasons
        with urllib.request.urlopen(site, timeout=10) as r:
            assert b"Welcome to your hosting" in r.read()
        shot("ready")
        d.set_window_size(390, 844)
        shot("ready-phone")
        d.set_window_size(1280, 1000)

        # A cross-site form post without the CSRF token: refused, nothing changes.
        Attacker.target = h.url
        # Threaded: Chromium opens speculative connections that a
        # one-at-a-time server would wait on.
        socketserver.ThreadingTCPServer.daemon_threads = True
        srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Attacker)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        d.get(f"http://127.0.0.1:{srv.server_address[1]}/")
        d.find_element(By.ID, "go").click()
        wait.until(lambda d: d.find_elements(By.ID, "error"))
        assert "refused" in d.find_element(By.ID, "error").text
        assert "403" in d.find_element(By.TAG_NAME, "h1").text
        shot("csrf-refused")
        log("cross-site post without the CSRF token refused")
        srv.shutdown()
        # The same post with the session cookie but no token, from a script
        # (no Origin header at all): refused too.
        sid = d.get_cookie("hostd_session")["value"]
        req = urllib.request.Request(h.url + "/ui/hosting/power", data=b"running=false",
                                     headers={"Cookie": f"hostd_session={sid}"})
        try:
            urllib.request.urlopen(req, timeout=10)
            raise AssertionError("a post without the CSRF token was accepted")
        except urllib.error.HTTPError as e:
            assert e.code == 403, e.code
        d.get(h.url + "/ui/hosting")
        assert d.find_elements(By.ID, "stop"), "the refused post stopped the hosting"
        assert phase() == "Ready"

        # Stop, then start, each followed live.
        d.find_element(By.ID, "stop").click()
        wait.until(lambda d: d.find_elements(By.ID, "start"))
        d.execute_script("window.__noReload = 43")
        wait_phase("Stopped")
        assert d.execute_script("return window.__noReload") == 43
        shot("stopped")
        d.find_element(By.ID, "start").click()
        wait.until(lambda d: d.find_elements(By.ID, "stop"))
        wait_phase("Ready")
        log("stopped and started")

        # Console page (the test driver runs no QEMU: nothing copied yet).
        d.find_element(By.ID, "console-link").click()
        wait.until(lambda d: "/ui/hosting/console" in d.current_url)
        assert d.find_elements(By.ID, "console-empty") or d.find_elements(By.ID, "console")
        shot("console")

        # Admin page: the user's hosting, with its phase and node.
        logout()
        login(*h.admin)
        d.get(h.url + "/ui/admin")
        table = d.find_element(By.ID, "admin-table").text
        assert user in table and "Ready" in table, table
        shot("admin")
        # A user cannot see it.
        logout()
        login(user, password)
        d.get(h.url + "/ui/admin")
        wait.until(lambda d: "403" in d.find_element(By.TAG_NAME, "h1").text)

        # Delete with confirmation; the page follows it until it is gone.
        d.get(h.url + "/ui/hosting")
        d.find_element(By.ID, "delete-link").click()
        shot("delete-confirm")
        fill("confirm", user)
        d.find_element(By.ID, "confirm-delete").click()
        wait.until(lambda d: d.find_elements(By.ID, "create-form"))
        shot("deleted")
        log("deleted")

        # No CSP violation or script error on any page (refused requests,
        # the 401/403 pages above, are logged as network errors: expected).
        bad = [e for e in d.get_log("browser")
               if "Content Security Policy" in e["message"] or e["source"] == "javascript"]
        assert not bad, bad
        log(f"passed; {len(shots)} screenshots in {ARTIFACTS}")
    except Exception:
        try:
            shot("failure")
            open(os.path.join(ARTIFACTS, "failure.html"), "w").write(d.page_source)
        except Exception:
            pass
        raise
    finally:
        d.quit()
        h.stop()


if __name__ == "__main__":
    main()
