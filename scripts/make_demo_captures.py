#!/usr/bin/env python3
"""Record the bundled demo captures: real encrypted traffic of real programs, on loopback.

Run as root on Debian/Ubuntu (it installs what it needs with apt-get)::

    sudo python3 scripts/make_demo_captures.py            # writes demo/captures/<class>/*.pcap

A larger, harder corpus for model studies (not bundled): more flows, more files per class,
each file recorded under other link conditions (a ``tc`` queueing discipline inside the
namespace: ``netem`` delay, jitter and loss where the kernel has it, ``tbf`` rate limits)::

    sudo python3 scripts/make_demo_captures.py --out /tmp/corpus --flows 600 --files 4 \\
        --seed 7 --link none --link "netem delay 5ms 2ms" \\
        --link "netem delay 20ms 8ms loss 0.5%" --link "tbf rate 8mbit burst 32kbit latency 80ms"

Everything runs inside a private network namespace (``unshare --net``) whose only
interface is its own loopback, so no packet can leave the machine and the host's
loopback is left alone. In that namespace the loopback gets an Ethernet-sized MTU (1500)
and segmentation offloads are switched off, so packet sizes look like a real link.

Each class is one behaviour, recorded by ``tcpdump`` on its server port:

* ``https-bulk``      curl / wget / Python downloading files (12 KB - 1 MB) from nginx over TLS
* ``https-small``     many small HTTPS requests (keep-alive, pauses) from curl, wget, Python
                      http.client and openssl s_client to nginx and a Python TLS server
* ``ssh-interactive`` OpenSSH sessions with a typed shell workload (keystrokes, pauses)
* ``scp-sftp``        scp (SFTP and legacy SCP protocol), sftp batches and curl/libssh2 SFTP
* ``tls-chat``        short messages with pauses over TLS (openssl s_client, socat, ncat,
                      Python) to socat and stunnel chat bots
* ``dns-over-tls``    DNS over TLS (RFC 7858) from kdig (GnuTLS) and a Python stub resolver
                      to unbound

QUIC is not recorded: Debian 12's curl has no HTTP/3 and no packaged client/server pair
speaks it. TLS versions (1.2 and 1.3), cipher suites, key types, SSH ciphers and key
exchanges, IPv4/IPv6, sizes and timings are drawn at random per flow (seeded), so no
single constant separates the classes.

Captures are written with snaplen ``--snaplen`` (default 384: the IP and transport
headers plus at least 240 payload bytes, what DMF's byte modality reads). To keep the
bundle small, packets after the first ``--keep-packets`` (default 16) of each flow are
cut to their headers; length fields keep the true sizes.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NETNS_MARK = "DMFNET_DEMO_NETNS"

# Debian packages -> a program each provides (installed only when missing).
PACKAGES = {
    "tcpdump": "tcpdump",
    "openssh-server": "sshd",
    "openssh-client": "ssh",
    "nginx-light": "nginx",
    "curl": "curl",
    "wget": "wget",
    "openssl": "openssl",
    "socat": "socat",
    "stunnel4": "stunnel4",
    "ncat": "ncat",
    "unbound": "unbound",
    "knot-dnsutils": "kdig",
    "iproute2": "ip",
    "ethtool": "ethtool",
}

CLASSES = (
    "https-bulk",
    "https-small",
    "ssh-interactive",
    "scp-sftp",
    "tls-chat",
    "dns-over-tls",
)

NGINX_RSA, NGINX_ECDSA, PY_TLS, SSH_PORT = 8443, 8444, 9443, 2222
CHAT_SOCAT, CHAT_STUNNEL, CHAT_PLAIN, DOT_PORT = 7443, 7444, 7000, 853
CLASS_PORTS = {
    "https-bulk": (NGINX_RSA, NGINX_ECDSA),
    "https-small": (NGINX_RSA, NGINX_ECDSA, PY_TLS),
    "ssh-interactive": (SSH_PORT,),
    "scp-sftp": (SSH_PORT,),
    "tls-chat": (CHAT_SOCAT, CHAT_STUNNEL),
    "dns-over-tls": (DOT_PORT,),
}

TLS12_CIPHERS = (
    "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-CHACHA20-POLY1305:ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA256:ECDHE-RSA-AES128-GCM-SHA256",
)
TLS13_SUITES = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256")
SSH_CIPHERS = (
    "chacha20-poly1305@openssh.com",
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
)
SSH_KEX = (
    "curve25519-sha256",
    "ecdh-sha2-nistp256",
    "diffie-hellman-group14-sha256",
    "sntrup761x25519-sha512@openssh.com",
)
SSH_HOSTKEYS = ("ssh-ed25519", "ecdsa-sha2-nistp256", "rsa-sha2-256", "rsa-sha2-512")
TYPED_COMMANDS = (
    "ls -la",
    "uptime",
    "cat /proc/loadavg",
    "whoami",
    "df -h /",
    "ps aux | wc -l",
    "date -u",
    "uname -a",
    "echo $HOME",
    "ls /etc | head -20",
    "free -m",
    "cd /tmp && ls | head",
    "id",
    "cat /etc/os-release | head -3",
    "env | sort | head -5",
    "history | tail -3",
    "wc -l /etc/passwd",
    "sleep 1",
)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(cmd: list[str] | str, **kw) -> subprocess.CompletedProcess:
    """Run a command, quietly; a non-zero exit of a client is recorded, not fatal."""
    shell = isinstance(cmd, str)
    kw.setdefault("stdout", subprocess.DEVNULL)
    kw.setdefault("stderr", subprocess.DEVNULL)
    return subprocess.run(cmd, shell=shell, timeout=kw.pop("timeout", 120), **kw)


# --------------------------------------------------------------------------- setup


def install_tools(skip: bool) -> None:
    missing = [pkg for pkg, prog in PACKAGES.items() if not _have(prog)]
    if not missing:
        return
    if skip:
        sys.exit(f"missing programs from packages: {' '.join(missing)}")
    log(f"apt-get install {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], check=True, env=env
    )


def _have(prog: str) -> bool:
    return shutil.which(prog) is not None or Path("/usr/sbin", prog).exists()


def enter_private_netns() -> None:
    """Re-run this script in a new network namespace (only its own loopback)."""
    if os.environ.get(NETNS_MARK):
        return
    env = dict(os.environ, **{NETNS_MARK: "1"})
    cmd = ["unshare", "--net", sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]]
    try:
        os.execvpe("unshare", cmd, env)
    except OSError as exc:
        sys.exit(f"cannot create a private network namespace (unshare --net): {exc}")


def configure_loopback() -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "link", "set", "lo", "mtu", "1500"], check=True)
    run(["ethtool", "-K", "lo", "tso", "off", "gso", "off", "gro", "off"])


def set_link_conditions(spec: str) -> None:
    """Link conditions on this namespace's loopback: a ``tc`` queueing discipline and its
    arguments, e.g. ``"netem delay 20ms 5ms loss 0.5%"`` (delay, jitter, loss; needs the
    kernel's sch_netem) or ``"tbf rate 20mbit burst 32kbit latency 50ms"`` (a bandwidth
    limit); ``"none"`` removes them. Every packet crosses the loopback once, so a netem
    delay of d adds 2d to each round trip."""
    if spec.strip() in ("", "none"):
        run(["tc", "qdisc", "del", "dev", "lo", "root"])
        return
    done = subprocess.run(
        ["tc", "qdisc", "replace", "dev", "lo", "root", *spec.split()],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        sys.exit(f"tc qdisc {spec!r} failed: {done.stderr.strip()}")


def make_keys(work: Path) -> None:
    """Throwaway certificates and SSH keys, made fresh on each run."""
    ssl_cmds = {
        "rsa": "-newkey rsa:2048",
        "ecdsa": "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1",
        "dot": "-newkey ec -pkeyopt ec_paramgen_curve:secp384r1",
        "chat": "-newkey rsa:3072",
    }
    names = {
        "rsa": "files.demo.test",
        "ecdsa": "cdn.demo.test",
        "dot": "dns.demo.test",
        "chat": "chat.demo.test",
    }
    for stem, keyopt in ssl_cmds.items():
        cn = names[stem]
        run(
            f"openssl req -x509 -nodes -days 30 {keyopt} -keyout {work}/{stem}.key "
            f"-out {work}/{stem}.crt -subj /CN={cn} -addext subjectAltName=DNS:{cn}",
            check=True,
        )
    for kind, bits in (("ed25519", ""), ("ecdsa", "-b 256"), ("rsa", "-b 3072")):
        run(f"ssh-keygen -q -t {kind} {bits} -N '' -f {work}/ssh_host_{kind}_key", check=True)
        run(f"ssh-keygen -q -t {kind} {bits} -N '' -f {work}/user_{kind}", check=True)
    auth = "".join((work / f"user_{k}.pub").read_text() for k in ("ed25519", "ecdsa", "rsa"))
    (work / "authorized_keys").write_text(auth)


def make_content(work: Path, rng: random.Random) -> None:
    """Files the servers hand out: bulk downloads, small API answers, SFTP payloads."""
    www = work / "www"
    (www / "bulk").mkdir(parents=True)
    (www / "api").mkdir()
    for i in range(40):
        size = int(min(1_000_000, max(12_000, rng.lognormvariate(10.6, 0.9))))
        (www / "bulk" / f"file{i}.bin").write_bytes(os.urandom(size))
    for i in range(60):
        size = int(min(9_000, max(120, rng.lognormvariate(7.0, 1.0))))
        items = ",".join(f'"x{j:05d}"' for j in range(size // 9))
        body = f'{{"id": {i}, "items": [{items}]}}'
        (www / "api" / f"item{i}.json").write_text(body)
    for i in range(10):
        (www / f"page{i}.html").write_text(
            "<html>" + "<p>demo</p>" * rng.randint(20, 400) + "</html>"
        )
    sftp = work / "sftp"
    sftp.mkdir()
    for i in range(30):
        size = int(min(800_000, max(4_000, rng.lognormvariate(10.6, 1.1))))
        (sftp / f"doc{i}.dat").write_bytes(os.urandom(size))
    (work / "upload").mkdir()


class Servers:
    """The servers of all classes, started once, stopped on exit."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs: list[subprocess.Popen] = []

    def spawn(self, cmd: list[str], **kw) -> subprocess.Popen:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=open(self.work / "servers.log", "ab"), **kw
        )
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        w = self.work
        (w / "nginx.conf").write_text(
            textwrap.dedent(f"""
            user root;
            worker_processes 2;
            pid {w}/nginx.pid;
            error_log {w}/nginx-error.log;
            events {{ worker_connections 512; }}
            http {{
              access_log off;
              client_body_temp_path {w}/nginx-body;
              proxy_temp_path {w}/nginx-proxy;
              fastcgi_temp_path {w}/nginx-fcgi;
              uwsgi_temp_path {w}/nginx-uwsgi;
              scgi_temp_path {w}/nginx-scgi;
              types {{ application/json json; text/html html; application/octet-stream bin; }}
              keepalive_timeout 10;
              ssl_protocols TLSv1.2 TLSv1.3;
              ssl_session_cache off;
              server {{
                listen 127.0.0.1:{NGINX_RSA} ssl http2; listen [::1]:{NGINX_RSA} ssl http2;
                ssl_certificate {w}/rsa.crt; ssl_certificate_key {w}/rsa.key;
                root {w}/www;
              }}
              server {{
                listen 127.0.0.1:{NGINX_ECDSA} ssl http2; listen [::1]:{NGINX_ECDSA} ssl http2;
                ssl_certificate {w}/ecdsa.crt; ssl_certificate_key {w}/ecdsa.key;
                root {w}/www;
              }}
            }}
            """)
        )
        self.spawn(["nginx", "-c", str(w / "nginx.conf"), "-g", "daemon off;"])
        (w / "py_tls_server.py").write_text(PY_TLS_SERVER)
        for host in ("127.0.0.1", "::1"):
            self.spawn([sys.executable, str(w / "py_tls_server.py"), host, str(PY_TLS), str(w)])

        Path("/run/sshd").mkdir(exist_ok=True)
        (w / "sshd_config").write_text(
            textwrap.dedent(f"""
            Port {SSH_PORT}
            ListenAddress 127.0.0.1
            ListenAddress ::1
            HostKey {w}/ssh_host_ed25519_key
            HostKey {w}/ssh_host_ecdsa_key
            HostKey {w}/ssh_host_rsa_key
            PidFile {w}/sshd.pid
            AuthorizedKeysFile {w}/authorized_keys
            PermitRootLogin prohibit-password
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            UsePAM no
            StrictModes no
            PrintMotd no
            PrintLastLog no
            MaxStartups 200
            Subsystem sftp internal-sftp
            LogLevel ERROR
            """)
        )
        self.spawn(["/usr/sbin/sshd", "-D", "-e", "-f", str(w / "sshd_config")])

        (w / "chat_bot.py").write_text(CHAT_BOT)
        bot = f"{sys.executable} -u {w}/chat_bot.py"
        self.spawn(
            [
                "socat",
                f"OPENSSL-LISTEN:{CHAT_SOCAT},fork,reuseaddr,pf=ip6,ipv6only=0,"
                f"cert={w}/chat.crt,key={w}/chat.key,verify=0",
                f"EXEC:{bot}",
            ]
        )
        self.spawn(
            ["socat", f"TCP-LISTEN:{CHAT_PLAIN},bind=127.0.0.1,fork,reuseaddr", f"EXEC:{bot}"]
        )
        (w / "stunnel.conf").write_text(
            textwrap.dedent(f"""
            foreground = yes
            pid =
            [chat]
            accept = :::{CHAT_STUNNEL}
            connect = 127.0.0.1:{CHAT_PLAIN}
            cert = {w}/ecdsa.crt
            key = {w}/ecdsa.key
            """)
        )
        self.spawn(["stunnel4", str(w / "stunnel.conf")])

        records = []
        for i in range(80):
            records.append(
                f'local-data: "host{i}.demo.test. 300 IN A 127.0.{i // 250}.{i % 250 + 1}"'
            )
            records.append(f'local-data: "host{i}.demo.test. 300 IN AAAA fd00::{i + 1:x}"')
            txt = " ".join(f'"v=demo{j} key={os.urandom(12).hex()}"' for j in range(i % 5 + 1))
            records.append(f"local-data: 'txt{i}.demo.test. 300 IN TXT {txt}'")
            records.append(f'local-data: "mail{i}.demo.test. 300 IN MX 10 host{i}.demo.test."')
        (w / "unbound.conf").write_text(
            textwrap.dedent(f"""
            server:
              interface: 127.0.0.1@{DOT_PORT}
              interface: ::1@{DOT_PORT}
              tls-port: {DOT_PORT}
              tls-service-key: {w}/dot.key
              tls-service-pem: {w}/dot.crt
              do-daemonize: no
              username: ""
              chroot: ""
              directory: {w}
              pidfile: {w}/unbound.pid
              use-syslog: no
              verbosity: 0
              num-threads: 1
              incoming-num-tcp: 200
              tcp-idle-timeout: 15000
              access-control: 127.0.0.0/8 allow
              access-control: ::1 allow
              local-zone: "demo.test." static
            """)
            + "\n".join("  " + r for r in records)
            + "\nremote-control:\n  control-enable: no\n"
        )
        self.spawn(["unbound", "-d", "-c", str(w / "unbound.conf")])
        time.sleep(2.0)
        for proc in self.procs:
            if proc.poll() is not None:
                log_text = (w / "servers.log").read_text(errors="replace")[-2000:]
                sys.exit(f"a server failed to start: {proc.args}\n{log_text}")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()


PY_TLS_SERVER = r"""
import http.server, socket, ssl, sys
host, port, work = sys.argv[1], int(sys.argv[2]), sys.argv[3]

class Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass

ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(work + "/rsa.crt", work + "/rsa.key")
httpd = Server((host, port), lambda *a: Handler(*a, directory=work + "/www"))
httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
httpd.serve_forever()
"""

CHAT_BOT = r"""
import random, sys, time
WORDS = "ok sure thanks noted yes no maybe later done see great right agreed".split()
rng = random.Random()
for line in sys.stdin:
    line = line.strip()
    time.sleep(rng.uniform(0.05, 0.6))
    if line == "bye":
        print("see you")
        break
    n = rng.randint(1, 12)
    print(" ".join(rng.choice(WORDS) for _ in range(n)))
    sys.stdout.flush()
"""


# ----------------------------------------------------------------------- workloads


def pick_host(rng: random.Random) -> str:
    return "::1" if rng.random() < 0.2 else "127.0.0.1"


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def tls_client_options(rng: random.Random, client: str) -> list[str]:
    """TLS version / cipher choice in each client's own syntax."""
    tls12 = rng.random() < 0.4
    if client == "curl":
        if tls12:
            return ["--tlsv1.2", "--tls-max", "1.2", "--ciphers", rng.choice(TLS12_CIPHERS)]
        return ["--tlsv1.3", "--tls13-ciphers", rng.choice(TLS13_SUITES)]
    if client == "wget":
        return ["--secure-protocol=TLSv1_2"] if tls12 else ["--secure-protocol=TLSv1_3"]
    if client == "openssl":
        if tls12:
            return ["-tls1_2", "-cipher", rng.choice(TLS12_CIPHERS)]
        return ["-tls1_3", "-ciphersuites", rng.choice(TLS13_SUITES)]
    raise ValueError(client)


def python_tls_context(
    rng: random.Random, tls12_ciphers: tuple[str, ...] = TLS12_CIPHERS
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if rng.random() < 0.4:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(rng.choice(tls12_ciphers))
    return ctx


def https_bulk(rng: random.Random, work: Path) -> Callable[[], None]:
    host = pick_host(rng)
    port = rng.choice((NGINX_RSA, NGINX_ECDSA))
    files = [f"/bulk/file{rng.randrange(40)}.bin" for _ in range(1 if rng.random() < 0.8 else 2)]
    base = f"https://{url_host(host)}:{port}"
    client = rng.choices(("curl", "wget", "python"), weights=(5, 3, 2))[0]
    if client == "curl":
        cmd = ["curl", "-s", "-k", "-o", "/dev/null", *tls_client_options(rng, "curl")]
        cmd += [rng.choice(("--http1.1", "--http2"))]
        if rng.random() < 0.3:
            cmd += ["--limit-rate", f"{rng.choice((200, 500, 1000, 3000))}k"]
        cmd += [base + f for f in files]
        if len(files) > 1:
            cmd.insert(4, "-o")
            cmd.insert(5, "/dev/null")
        return lambda: run(cmd)
    if client == "wget":
        cmd = ["wget", "-q", "-O", "/dev/null", "--no-check-certificate"]
        cmd += tls_client_options(rng, "wget") + [base + f for f in files]
        return lambda: run(cmd)
    ctx = python_tls_context(rng)

    def fetch() -> None:
        import http.client

        conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=30)
        for f in files:
            conn.request("GET", f, headers={"User-Agent": "demo-fetch/1.0"})
            resp = conn.getresponse()
            while resp.read(65536):
                pass
        conn.close()

    return fetch


def https_small(rng: random.Random, work: Path) -> Callable[[], None]:
    host = pick_host(rng)
    port = rng.choice((NGINX_RSA, NGINX_ECDSA, PY_TLS))
    n = rng.choice((1, 1, 2, 3, 4, 6, 8, 12))
    paths = [
        f"/api/item{rng.randrange(60)}.json"
        if rng.random() < 0.8
        else f"/page{rng.randrange(10)}.html"
        for _ in range(n)
    ]
    base = f"https://{url_host(host)}:{port}"
    client = rng.choices(("python", "curl", "wget", "openssl"), weights=(4, 3, 2, 2))[0]
    if client == "curl":
        cmd = [
            "curl",
            "-s",
            "-k",
            *tls_client_options(rng, "curl"),
            rng.choice(("--http1.1", "--http2")),
        ]
        for p in paths:
            cmd += ["-o", "/dev/null", base + p]
        if port == PY_TLS and "--http2" in cmd:
            cmd.remove("--http2")
        return lambda: run(cmd)
    if client == "wget":
        cmd = ["wget", "-q", "-O", "/dev/null", "--no-check-certificate"]
        cmd += tls_client_options(rng, "wget") + [base + p for p in paths[:3]]
        return lambda: run(cmd)
    if client == "openssl":
        cmd = ["openssl", "s_client", "-quiet", "-connect", f"{url_host(host)}:{port}"]
        cmd += ["-servername", "files.demo.test", *tls_client_options(rng, "openssl")]
        request = f"GET {paths[0]} HTTP/1.1\r\nHost: files.demo.test\r\nConnection: close\r\n\r\n"
        return lambda: run(cmd, input=request.encode(), timeout=20)
    ctx = python_tls_context(rng)
    pauses = [rng.uniform(0.05, 0.8) for _ in paths]

    def browse() -> None:
        import http.client

        conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=30)
        for p, pause in zip(paths, pauses, strict=True):
            conn.request("GET", p, headers={"Accept": "application/json"})
            conn.getresponse().read()
            time.sleep(pause)
        conn.close()

    return browse


def ssh_options(rng: random.Random, work: Path) -> list[str]:
    key = rng.choice(("ed25519", "ecdsa", "rsa"))
    return [
        "-F", "/dev/null",
        "-i", str(work / f"user_{key}"),
        "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null",
        "-o", "BatchMode=yes",
        "-o", "LogLevel=ERROR",
        "-o", f"Ciphers={rng.choice(SSH_CIPHERS)}",
        "-o", f"KexAlgorithms={rng.choice(SSH_KEX)}",
        "-o", f"HostKeyAlgorithms={rng.choice(SSH_HOSTKEYS)}",
        "-o", f"Compression={'yes' if rng.random() < 0.2 else 'no'}",
    ]  # fmt: skip


def ssh_interactive(rng: random.Random, work: Path) -> Callable[[], None]:
    host = pick_host(rng)
    cmd = ["ssh", "-tt", "-p", str(SSH_PORT), *ssh_options(rng, work), f"root@{host}"]
    commands = rng.sample(TYPED_COMMANDS, rng.randint(1, 3)) + ["exit"]
    typed = rng.random() < 0.75  # else whole lines at once (pasted)
    script: list[tuple[bytes, float]] = [(b"", rng.uniform(0.3, 1.0))]
    for c in commands:
        if typed:
            script += [(ch.encode(), rng.uniform(0.03, 0.22)) for ch in c]
            script.append((b"\r", rng.uniform(0.4, 2.0)))
        else:
            script.append((c.encode() + b"\r", rng.uniform(0.4, 2.0)))

    def session() -> None:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            for data, pause in script:
                if data:
                    proc.stdin.write(data)
                    proc.stdin.flush()
                time.sleep(pause)
            proc.stdin.close()
            proc.wait(timeout=15)
        except (BrokenPipeError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()

    return session


def scp_sftp(rng: random.Random, work: Path) -> Callable[[], None]:
    host = pick_host(rng)
    docs = [
        work / "sftp" / f"doc{rng.randrange(30)}.dat" for _ in range(rng.choice((1, 1, 1, 2, 3)))
    ]
    target = f"root@{url_host(host)}"
    mode = rng.choices(("scp-up", "scp-down", "sftp", "curl"), weights=(3, 3, 3, 2))[0]
    opts = ssh_options(rng, work)
    legacy = ["-O"] if rng.random() < 0.4 else []
    if mode == "scp-up":
        cmd = [
            "scp",
            "-q",
            *legacy,
            "-P",
            str(SSH_PORT),
            *opts,
            *map(str, docs),
            f"{target}:{work}/upload/",
        ]
        return lambda: run(cmd)
    if mode == "scp-down":
        cmd = [
            "scp",
            "-q",
            *legacy,
            "-P",
            str(SSH_PORT),
            *opts,
            f"{target}:{docs[0]}",
            str(work / "upload" / "dl.tmp"),
        ]
        return lambda: run(cmd)
    if mode == "sftp":
        lines = []
        for d in docs:
            lines.append(
                rng.choice(
                    (f"get {d} {work}/upload/", f"put {d} {work}/upload/", f"ls -l {work}/sftp")
                )
            )
        batch = work / f"batch{rng.randrange(10**9)}.txt"
        batch.write_text("\n".join(lines) + "\n")
        cmd = ["sftp", "-q", "-b", str(batch), "-P", str(SSH_PORT), *opts, target]
        return lambda: run(cmd)
    key = rng.choice(("ecdsa", "rsa"))
    cmd = [
        "curl",
        "-s",
        "-k",
        "-u",
        "root:",
        "--key",
        str(work / f"user_{key}"),
        "--pubkey",
        str(work / f"user_{key}.pub"),
    ]
    cmd += ["-o", "/dev/null", f"sftp://{url_host(host)}:{SSH_PORT}{docs[0]}"]
    return lambda: run(cmd)  # fmt: skip


def tls_chat(rng: random.Random, work: Path) -> Callable[[], None]:
    host = pick_host(rng)
    port = rng.choice((CHAT_SOCAT, CHAT_STUNNEL))
    words = "hello hi how are you doing today meeting at noon lunch sounds good see the report draft link".split()
    messages = [
        " ".join(rng.choice(words) for _ in range(rng.randint(1, 16)))
        for _ in range(rng.randint(2, 10))
    ]
    messages.append("bye")
    pauses = [rng.uniform(0.15, 1.2) for _ in messages]
    client = rng.choices(("openssl", "socat", "ncat", "python"), weights=(3, 3, 2, 2))[0]
    if client == "openssl":
        cmd = [
            "openssl",
            "s_client",
            "-quiet",
            "-connect",
            f"{url_host(host)}:{port}",
            *tls_client_options(rng, "openssl"),
        ]
    elif client == "socat":
        version = rng.choice(
            ("", ",openssl-min-proto-version=TLS1.3", ",openssl-max-proto-version=TLS1.2")
        )
        cmd = ["socat", "-", f"OPENSSL:{url_host(host)}:{port},verify=0{version}"]
    elif client == "ncat":
        cmd = ["ncat", "--ssl", host, str(port)]
    else:
        ctx = python_tls_context(rng)

        def talk() -> None:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            with socket.socket(family) as raw, ctx.wrap_socket(raw) as s:
                s.settimeout(10)
                s.connect((host, port))
                for m, pause in zip(messages, pauses, strict=True):
                    s.sendall(m.encode() + b"\n")
                    try:
                        s.recv(4096)
                    except TimeoutError:
                        break
                    time.sleep(pause)

        return talk

    def chat() -> None:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            time.sleep(0.3)
            for m, pause in zip(messages, pauses, strict=True):
                proc.stdin.write(m.encode() + b"\n")
                proc.stdin.flush()
                time.sleep(pause)
            proc.wait(timeout=5)
        except (BrokenPipeError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()

    return chat  # fmt: skip


def dns_query(name: str, qtype: int, qid: int) -> bytes:
    """A DNS query in wire format (RFC 1035 §4.1), recursion desired."""
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", qtype, 1)


def dns_over_tls(rng: random.Random, work: Path) -> Callable[[], None]:
    host = pick_host(rng)
    names = []
    for _ in range(rng.choice((1, 1, 2, 3, 5, 8))):
        i = rng.randrange(80)
        names.append(rng.choice(((f"host{i}.demo.test", "A", 1), (f"host{i}.demo.test", "AAAA", 28),
                                 (f"txt{i}.demo.test", "TXT", 16), (f"mail{i}.demo.test", "MX", 15),
                                 (f"nohost{i}.demo.test", "A", 1))))  # fmt: skip
    if rng.random() < 0.5:
        cmd = ["kdig", "+tls", "+keepopen", "+timeout=5", "-p", str(DOT_PORT), f"@{host}"]
        if rng.random() < 0.3:
            cmd.append("+tls-sni=dns.demo.test")
        for name, qtype, _ in names:
            cmd += [name, qtype]
        return lambda: run(cmd)
    ctx = python_tls_context(rng, TLS12_CIPHERS[:3])  # unbound refuses CBC suites
    pauses = [rng.uniform(0.0, 0.5) for _ in names]

    def resolve() -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with (
            socket.socket(family) as raw,
            ctx.wrap_socket(raw, server_hostname="dns.demo.test") as s,
        ):
            s.settimeout(10)
            s.connect((host, DOT_PORT))
            for (name, _, qtype), pause in zip(names, pauses, strict=True):
                q = dns_query(name, qtype, rng.randrange(65536))
                s.sendall(struct.pack("!H", len(q)) + q)
                size = struct.unpack("!H", _recv_exact(s, 2))[0]
                _recv_exact(s, size)
                time.sleep(pause)

    return resolve


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


WORKLOADS: dict[str, tuple[Callable[[random.Random, Path], Callable[[], None]], int]] = {
    # class -> (flow factory, clients in parallel)
    "https-bulk": (https_bulk, 4),
    "https-small": (https_small, 6),
    "ssh-interactive": (ssh_interactive, 32),
    "scp-sftp": (scp_sftp, 4),
    "tls-chat": (tls_chat, 32),
    "dns-over-tls": (dns_over_tls, 8),
}


# --------------------------------------------------------------------- recording


def record(
    name: str, flows: int, rng: random.Random, work: Path, out: Path, snaplen: int, keep: int
) -> dict:
    """Run ``flows`` clients of one class while tcpdump records its server ports."""
    factory, parallel = WORKLOADS[name]
    raw = work / f"{name}.raw.pcap"
    bpf = " or ".join(f"tcp port {p}" for p in CLASS_PORTS[name])
    dump = subprocess.Popen(
        ["tcpdump", "-i", "lo", "-s", str(snaplen), "-U", "-n", "-w", str(raw), bpf],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _wait_listening(dump)
    jobs = [factory(rng, work) for _ in range(flows)]
    starts = [rng.uniform(0.0, 0.15) for _ in jobs]
    failures = 0
    lock = threading.Lock()

    def one(job: Callable[[], None], delay: float) -> None:
        nonlocal failures
        time.sleep(delay)
        try:
            job()
        except Exception:  # a failed client still leaves a (short) real flow
            with lock:
                failures += 1

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        list(pool.map(one, jobs, starts))
    time.sleep(1.0)
    dump.send_signal(signal.SIGINT)
    dump.wait(timeout=10)
    out.parent.mkdir(parents=True, exist_ok=True)
    stats = trim_capture(raw, out, keep)
    raw.unlink()
    stats["client_errors"] = failures
    return stats


def _wait_listening(dump: subprocess.Popen) -> None:
    line = dump.stderr.readline().decode(errors="replace")
    if "listening" not in line:
        sys.exit(f"tcpdump did not start: {line.strip()}")
    threading.Thread(target=dump.stderr.read, daemon=True).start()
    time.sleep(0.3)


def trim_capture(src: Path, dst: Path, keep: int) -> dict:
    """Copy a pcap, cutting packets after the first ``keep`` of each TCP connection to headers.

    Only reads what tcpdump wrote on this namespace's loopback: Ethernet, IPv4/IPv6, TCP.
    """
    data = src.read_bytes()
    magic = struct.unpack("<I", data[:4])[0]
    if magic != 0xA1B2C3D4:
        raise ValueError(f"{src}: not a little-endian microsecond pcap")
    out = bytearray(data[:24])
    seen: dict[tuple, int] = {}
    pos, packets, trimmed = 24, 0, 0
    while pos + 16 <= len(data):
        ts_s, ts_us, caplen, wirelen = struct.unpack_from("<IIII", data, pos)
        rec = data[pos + 16 : pos + 16 + caplen]
        pos += 16 + caplen
        packets += 1
        key, header_end = _tcp_key(rec)
        if key is not None:
            n = seen.get(key, 0)
            seen[key] = n + 1
            if n >= keep and header_end < len(rec):
                rec = rec[:header_end]
                trimmed += 1
        out += struct.pack("<IIII", ts_s, ts_us, len(rec), wirelen) + rec
    dst.write_bytes(bytes(out))
    return {"packets": packets, "trimmed": trimmed, "connections": len(seen), "bytes": len(out)}


def _tcp_key(rec: bytes) -> tuple[tuple | None, int]:
    if len(rec) < 14:
        return None, 0
    ethertype = struct.unpack_from("!H", rec, 12)[0]
    if ethertype == 0x0800 and len(rec) >= 34:
        ihl = (rec[14] & 0x0F) * 4
        proto, src, dst = rec[23], rec[26:30], rec[30:34]
        l4 = 14 + ihl
    elif ethertype == 0x86DD and len(rec) >= 54:
        proto, src, dst = rec[20], rec[22:38], rec[38:54]
        l4 = 54
    else:
        return None, 0
    if proto != 6 or len(rec) < l4 + 20:
        return None, 0
    sport, dport = struct.unpack_from("!HH", rec, l4)
    header_end = l4 + (rec[l4 + 12] >> 4) * 4
    key = tuple(sorted(((src, sport), (dst, dport))))
    return key, header_end


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "demo" / "captures")
    parser.add_argument("--flows", type=int, default=180, help="client connections per class")
    parser.add_argument("--files", type=int, default=2, help="capture files per class")
    parser.add_argument("--seed", type=int, default=2025)
    parser.add_argument("--snaplen", type=int, default=384)
    parser.add_argument("--keep-packets", type=int, default=16)
    parser.add_argument("--classes", nargs="*", default=list(CLASSES), choices=CLASSES)
    parser.add_argument("--no-install", action="store_true", help="fail instead of apt-get")
    parser.add_argument(
        "--link",
        action="append",
        default=[],
        metavar="QDISC",
        help="link conditions: a tc queueing discipline with its arguments, e.g. 'netem delay "
        "20ms 5ms loss 0.5%%' or 'tbf rate 20mbit burst 32kbit latency 50ms'; 'none' for a "
        "clean link. Repeat it to record capture file k of each class under the k-th "
        "(cycling). Default: a clean link",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: it installs packages, opens a network namespace and runs tcpdump")
    if not os.environ.get(NETNS_MARK):
        install_tools(args.no_install)
        enter_private_netns()
    configure_loopback()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="dmfnet-demo-"))
    os.chmod(work, 0o755)
    servers = Servers(work)
    started = time.time()
    try:
        make_keys(work)
        make_content(work, rng)
        servers.start()
        for name in args.classes:
            shutil.rmtree(args.out / name, ignore_errors=True)
            for part in range(args.files):
                flows = args.flows // args.files + (part < args.flows % args.files)
                dst = args.out / name / f"{name}-{part + 1}.pcap"
                conditions = args.link[part % len(args.link)] if args.link else "none"
                set_link_conditions(conditions)
                t0 = time.time()
                stats = record(name, flows, rng, work, dst, args.snaplen, args.keep_packets)
                log(
                    f"{dst.relative_to(args.out.parent) if args.out.parent in dst.parents else dst}: "
                    f"{stats['connections']} TCP connections, {stats['packets']} packets "
                    f"({stats['trimmed']} cut to headers), {stats['bytes'] / 1e6:.2f} MB, "
                    f"{stats['client_errors']} client errors, {time.time() - t0:.0f} s"
                    + (f", link {conditions}" if args.link else "")
                )
    finally:
        if args.link:
            set_link_conditions("none")
        servers.stop()
        shutil.rmtree(work, ignore_errors=True)
    log(f"done in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
