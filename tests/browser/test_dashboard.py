#!/usr/bin/env python3
"""Browser test of the dashboard: a real Chromium (Debian's chromium and
chromium-driver, driven by Selenium) against a real hostd (examples/ui_harness:
API + running reconciler, real Postgres and nginx, libvirt's test driver,
stand-in guests). It signs up, logs out and in, creates a hosting and watches
it reach Ready on the page without a reload (Server-Sent Events), stops and
starts it, reads the console page, proves that a cross-site form post without
the CSRF token is refused and changes nothing, changes the SSH keys, takes a
backup and sees it complete live, restores it after the disk's content changed
(the test driver's disk is a real qcow2 file this script writes), changes the
password (the old session's next page is the login page), deletes an account
without a hosting, refuses forged posts to every form, and as admin stops and
deletes another user's hosting; finally the user deletes their own hosting.
Every page is screenshotted into $ARTIFACTS.

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
import urllib.parse
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import (NoSuchElementException, StaleElementReferenceException,
                                        WebDriverException)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

ARTIFACTS = os.environ.get("ARTIFACTS", "target/artifacts/browser")
READY_TIMEOUT = 120


def api(h, method, path, token=None, body=None, form=None):
    """A JSON API call: (status, parsed body)."""
    data, headers = None, {}
    if body is not None:
        data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
    if form is not None:
        data = urllib.parse.urlencode(form).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(h.url + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def token_of(h, user, password):
    s, t = api(h, "POST", "/api/v1/auth/login", form={"username": user, "password": password})
    assert s == 200, (s, t)
    return t["access_token"]


def qemu_disk(path, byte, create):
    """Writes `byte` over the first 64 KiB of a qcow2 image (made if `create`)."""
    if create:
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, "64M"], check=True)
    subprocess.run(["qemu-io", "-c", f"write -P {byte} 0 64k", path], check=True,
                   stdout=subprocess.DEVNULL)


def qemu_holds(path, byte):
    out = subprocess.run(["qemu-io", "-r", "-c", f"read -P {byte} 0 64k", path],
                         capture_output=True, text=True)
    return out.returncode == 0 and "Pattern verification failed" not in out.stdout


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **k):
        return None


def raw_post(h, path, cookie, form):
    """A form post with a session cookie and no redirects followed: the status."""
    req = urllib.request.Request(h.url + path, data=urllib.parse.urlencode(form).encode(),
                                 headers={"Cookie": cookie})
    try:
        with urllib.request.build_opener(NoRedirect).open(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def raw_get(h, path, cookie):
    """A page with a session cookie, no redirects followed: (status, Location)."""
    req = urllib.request.Request(h.url + path, headers={"Cookie": cookie})
    try:
        with urllib.request.build_opener(NoRedirect).open(req, timeout=10) as r:
            return r.status, None
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Location")


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
        self.pool_dir = info["pool_dir"]

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
    # Pages navigate and live views rebuild their tables between a find and
    # a read: such a look is retried, not failed (Chromium may report an
    # element of the page just left as a generic inspector error, "Node with
    # given id does not belong to the document", hence WebDriverException).
    wait = WebDriverWait(d, READY_TIMEOUT, poll_frequency=0.2,
                         ignored_exceptions=(StaleElementReferenceException, NoSuchElementException,
                                             WebDriverException))
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

        # SSH keys: a second key added (pasted), the first removed; the
        # page shows each key's fingerprint as ssh-keygen prints it.
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "second@laptop",
                        "-f", f"{kd}/k2"], check=True)
        pub2 = open(f"{kd}/k2.pub").read().strip()
        fp = lambda f: subprocess.run(["ssh-keygen", "-l", "-f", f], capture_output=True,
                                      text=True, check=True).stdout.split()[1]
        fp1, fp2 = fp(f"{kd}/k.pub"), fp(f"{kd}/k2.pub")
        d.find_element(By.ID, "keys-link").click()
        wait.until(lambda d: d.find_elements(By.ID, "key-form"))
        assert fp1 in d.find_element(By.ID, "keys").text
        d.find_element(By.NAME, "ssh_key").send_keys(pub2)
        d.find_element(By.ID, "add-key").click()
        wait.until(lambda d: fp2 in d.find_element(By.ID, "keys").text)
        for row in d.find_elements(By.CSS_SELECTOR, "#keys tbody tr"):
            if fp1 in row.text:
                row.find_element(By.CSS_SELECTOR, "button.danger").click()
                break
        wait.until(lambda d: fp1 not in d.find_element(By.ID, "keys").text)
        assert fp2 in d.find_element(By.ID, "keys").text
        status = d.find_element(By.ID, "keys-status").text
        assert status, "the page says whether the change reached the guest"
        shot("keys")
        tok = token_of(h, user, password)
        s_, me = api(h, "GET", "/api/v1/host/my", tok)
        assert me["spec"]["ssh_public_keys"] == [pub2], me["spec"]
        log(f"keys changed: {status}")

        # Backups: stopped (the test driver backs up a stopped guest's disk
        # file), a real qcow2 where the pool keeps the disk, a backup taken
        # and followed live to Completed, the disk changed, the backup
        # restored through its confirmation page, the old content back.
        d.get(h.url + "/ui/hosting")
        d.find_element(By.ID, "stop").click()
        wait.until(lambda d: d.find_elements(By.ID, "start"))
        wait_phase("Stopped")
        disk = os.path.join(h.pool_dir, f"hostd-{me['id']}-disk.qcow2")
        qemu_disk(disk, 0x51, create=True)
        d.find_element(By.ID, "backups-manage").click()
        wait.until(lambda d: d.find_elements(By.ID, "backup-now"))
        d.execute_script("window.__noReload = 44")
        d.find_element(By.ID, "backup-now").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#backups tr[data-state]"))
        d.execute_script("window.__noReload = 45")
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#backups tr[data-state]")
                   .get_attribute("data-state") == "Completed")
        assert d.execute_script("return window.__noReload") == 45, "the page was reloaded"
        assert d.find_element(By.ID, "backup-now").is_enabled()
        shot("backups")
        log("backup completed, seen live")
        qemu_disk(disk, 0x52, create=False)
        assert not qemu_holds(disk, 0x51)
        d.find_element(By.CSS_SELECTOR, "a.restore-link").click()
        wait.until(lambda d: d.find_elements(By.ID, "restore-form"))
        assert "quarantine" in d.find_element(By.ID, "restore-form").text
        shot("restore-confirm")
        d.find_element(By.ID, "restore-confirm").click()
        d.find_element(By.ID, "confirm-restore").click()
        wait.until(lambda d: d.find_elements(By.ID, "live"))
        wait.until(lambda d: "DiskRestored" in [e.text for e in
                                                d.find_elements(By.CSS_SELECTOR, "#events b")])
        wait_phase("Stopped")
        assert qemu_holds(disk, 0x51), "the backup's content is back"
        log("restored")
        d.find_element(By.ID, "start").click()
        wait.until(lambda d: d.find_elements(By.ID, "stop"))
        wait_phase("Ready")

        # Password change: this browser continues, the old session's next
        # page is the login page, the old token is void.
        old = "hostd_session=" + d.get_cookie("hostd_session")["value"]
        d.find_element(By.ID, "account-link").click()
        wait.until(lambda d: d.find_elements(By.ID, "password-form"))
        password2 = "correct horse battery staple"
        fill("old_password", password)
        fill("new_password", password2)
        d.find_element(By.ID, "change-password").click()
        wait.until(lambda d: d.find_elements(By.ID, "account-notice"))
        shot("password-changed")
        st, loc = raw_get(h, "/ui/hosting", old)
        assert st == 303 and loc.endswith("/ui/login"), (st, loc)
        assert api(h, "GET", "/api/v1/host/my", tok)[0] == 401
        password = password2
        log("password changed; the old session ends at the login page")

        # Forged posts to every new form (this session's cookie, no token):
        # refused, nothing changed.
        mine = "hostd_session=" + d.get_cookie("hostd_session")["value"]
        tok = token_of(h, user, password)
        before = api(h, "GET", "/api/v1/host/my", tok)[1]
        for path, form in [("/ui/backups", {}), ("/ui/backups/restore", {"id": "x", "confirm": "yes"}),
                           ("/ui/hosting/reset", {"confirm": user}),
                           ("/ui/keys/add", {"ssh_key": pub}), ("/ui/keys/remove", {"fingerprint": fp2}),
                           ("/ui/account/password", {"old_password": password, "new_password": "x" * 12}),
                           ("/ui/account/logout-all", {}), ("/ui/account/delete", {"password": password})]:
            assert raw_post(h, path, mine, form) == 403, path
        after = api(h, "GET", "/api/v1/host/my", tok)[1]
        assert (after["generation"], after["spec"]) == (before["generation"], before["spec"])
        assert api(h, "GET", "/api/v1/host/my/backups", tok)[1][0]["state"] == "Completed"
        assert raw_get(h, "/ui/hosting", mine)[0] == 200, "the forged logout-all ended nothing"
        log("forged posts to the new forms refused")

        # An account without a hosting is deleted from its account page.
        logout()
        d.get(h.url + "/ui/signup")
        fill("email", "leaver@example.com")
        fill("username", "browser-leaver")
        fill("password", "leaving for good")
        d.find_element(By.CSS_SELECTOR, "#signup-form button[type=submit]").click()
        wait.until(lambda d: d.find_elements(By.ID, "create-form"))
        d.find_element(By.ID, "account-link").click()
        wait.until(lambda d: d.find_elements(By.ID, "delete-account-form"))
        fill("password", "leaving for good")
        d.find_element(By.ID, "delete-account").click()
        wait.until(lambda d: d.current_url.endswith("/ui/login"))
        assert api(h, "POST", "/api/v1/auth/login",
                   form={"username": "browser-leaver", "password": "leaving for good"})[0] == 401
        log("account without a hosting deleted")

        # Another user's hosting (through the API), which the admin stops
        # and deletes from the admin page.
        s_, _ = api(h, "POST", "/api/v1/auth/register",
                    body={"email": "other@example.com", "username": "browser-other",
                          "password": "other password"})
        assert s_ == 201
        other = token_of(h, "browser-other", "other password")
        assert api(h, "POST", "/api/v1/host", other)[0] == 202
        login(*h.admin)
        d.get(h.url + "/ui/admin")
        assert "Memory (MiB)" in d.find_element(By.ID, "capacity").text
        admin_cookie = "hostd_session=" + d.get_cookie("hostd_session")["value"]
        for path in ["/ui/admin/hosting/power", "/ui/admin/hosting/delete", "/ui/admin/users/role",
                     "/ui/admin/nodes/add", "/ui/admin/nodes/schedule", "/ui/admin/nodes/fence",
                     "/ui/admin/nodes/evacuate", "/ui/admin/nodes/remove"]:
            assert raw_post(h, path, admin_cookie, {"id": me["id"], "running": "false",
                                                     "confirm": user, "username": user,
                                                     "role": "admin"}) == 403, path
        assert api(h, "GET", "/api/v1/host/my", tok)[1]["spec"]["running"] is True

        def other_row():
            return d.find_element(By.CSS_SELECTOR, "#admin-table tr[data-owner='browser-other']")
        wait.until(lambda d: (d.refresh() or True) and "Ready" in other_row().text)
        shot("admin")
        other_row().find_element(By.CSS_SELECTOR, "button.admin-stop").click()
        wait.until(lambda d: d.find_elements(By.ID, "admin-notice"))
        wait.until(lambda d: (d.refresh() or True) and "Stopped" in other_row().text
                   and "converging" not in other_row().text)
        evs = api(h, "GET", "/api/v1/host/my", other)[1]["events"]
        assert any(e["reason"] == "AdminAction" and "administrator admin" in e["message"]
                   for e in evs), evs
        other_row().find_element(By.CSS_SELECTOR, "a.admin-delete").click()
        wait.until(lambda d: d.find_elements(By.ID, "admin-delete-form"))
        shot("admin-delete-confirm")
        fill("confirm", "browser-other")
        d.find_element(By.ID, "confirm-admin-delete").click()
        wait.until(lambda d: d.find_elements(By.ID, "admin-notice"))
        wait.until(lambda d: (d.refresh() or True) and not d.find_elements(
            By.CSS_SELECTOR, "#admin-table tr[data-owner='browser-other']"))
        assert api(h, "GET", "/api/v1/host/my", other)[0] == 404
        shot("admin-after")
        log("admin stopped and deleted another user's hosting")
        # A user cannot see the admin page.
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
            # What the reconciler last said about the hosting.
            log(json.dumps(api(h, "GET", "/api/v1/host/my", token_of(h, user, password))[1])[:4000])
        except Exception:
            pass
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
