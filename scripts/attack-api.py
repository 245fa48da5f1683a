#!/usr/bin/env python3
# Replays the attacks of issue 11 against a running hostd API and prints what
# happened (numbers, no assertions; tests/abuse.rs holds the assertions).
# Usage: scripts/attack-api.py http://127.0.0.1:8000/api/v1 wrong50|register30|passwords|flood
# Use a throwaway instance: it registers users and trips rate limits. `flood`
# measures a real user's login while 24 threads send wrong logins.
import json, sys, time, threading, urllib.request, urllib.error, urllib.parse, random, statistics
API = sys.argv[1]
def req(method, path, data=None, form=None, token=None):
    h = {}
    body = None
    if data is not None:
        body = json.dumps(data).encode(); h['content-type'] = 'application/json'
    if form is not None:
        body = urllib.parse.urlencode(form).encode(); h['content-type'] = 'application/x-www-form-urlencoded'
    if token: h['authorization'] = 'Bearer ' + token
    r = urllib.request.Request(API + path, data=body, method=method, headers=h)
    try:
        with urllib.request.urlopen(r, timeout=60) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
mode = sys.argv[2]
if mode == 'wrong50':
    req('POST', '/auth/register', {'email': 'victim@example.com', 'username': 'victim', 'password': 'correct horse'})
    codes = [req('POST', '/auth/login', form={'username': 'victim', 'password': 'guess%d' % i})[0] for i in range(50)]
    print('50 wrong passwords:', {c: codes.count(c) for c in set(codes)}, 'first 429 at attempt', codes.index(429) + 1 if 429 in codes else None)
elif mode == 'register30':
    codes = [req('POST', '/auth/register', {'email': 'r%d@example.com' % i, 'username': 'reg%d' % i, 'password': 'correct horse'})[0] for i in range(30)]
    print('30 registrations from one address:', {c: codes.count(c) for c in set(codes)})
elif mode == 'passwords':
    req('POST', '/auth/register', {'email': 'p72@example.com', 'username': 'p72', 'password': 'p' * 72})
    print('72-byte password + extra at login:', req('POST', '/auth/login', form={'username': 'p72', 'password': 'p' * 72 + 'anything'})[0])
    print('eight NUL bytes at registration:', req('POST', '/auth/register', {'email': 'nul@example.com', 'username': 'nul', 'password': '\0' * 8})[0])
    print('empty password at login:', req('POST', '/auth/login', form={'username': 'p72', 'password': ''})[0])
    a = req('POST', '/auth/register', {'email': 'p72@example.com', 'username': 'other1', 'password': 'correct horse'})
    b = req('POST', '/auth/register', {'email': 'other@example.com', 'username': 'p72', 'password': 'correct horse'})
    print('registration conflicts:', a[0], a[1].decode(), '|', b[0], b[1].decode())
elif mode == 'flood':
    req('POST', '/auth/register', {'email': 'real@example.com', 'username': 'realuser', 'password': 'correct horse'})
    def t():
        s = time.time(); c, _ = req('POST', '/auth/login', form={'username': 'realuser', 'password': 'correct horse'}); return time.time() - s, c
    base = [t() for _ in range(3)]
    stop = time.time() + 12
    codes = []
    def attacker():
        while time.time() < stop:
            codes.append(req('POST', '/auth/login', form={'username': 'nobody%d' % random.randrange(10**9), 'password': 'wrong password'})[0])
    ths = [threading.Thread(target=attacker) for _ in range(24)]
    [x.start() for x in ths]
    time.sleep(2)
    under = [t() for _ in range(5)]
    [x.join() for x in ths]
    print('real login alone: %.2f s; under 24 concurrent attackers: median %.2f s max %.2f s (codes %s); attacker answers: %s' % (
        statistics.median([b[0] for b in base]), statistics.median([u[0] for u in under]), max(u[0] for u in under),
        [u[1] for u in under], {c: codes.count(c) for c in set(codes)}))
