#!/usr/bin/env python3
"""Checks the Dockerfile against the build CI runs, since no Docker engine runs here.

The Dockerfile's build stage must run exactly the command CI runs (BUILD_COMMAND, which
.ci/run must contain), with the same Rust minor version and Debian release as this machine,
so that a green CI proves the image's build step. The runtime stage must run as a non-root
user, expose the port it listens on, and start the binary the build stage made.

When CI has built that binary (target/release/keyless), the binary is checked too: it must
link only libraries the distroless cc image has, need no newer glibc than that image's, and
run the way the image runs it, as uid 65532 with no capabilities, an empty environment and,
where this machine lets a mount namespace be made, a read-only root filesystem: it answers
/healthz and exits 0 on SIGTERM.

    python3 tests/docker/check.py        (stdlib only; run after `cargo build --release --locked`)

The last line is `N passed, N failed, N skipped`; the exit code is 1 if any check failed.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
CI_RUN = ROOT / ".ci" / "run"
BINARY = ROOT / "target" / "release" / "keyless"

# The build command: the Dockerfile's build stage runs it, and so does .ci/run.
BUILD_COMMAND = "cargo build --release --locked"
RUNTIME_BASE = "gcr.io/distroless/cc-debian12"
# What gcr.io/distroless/cc-debian12 provides for a binary to link (Debian 12: glibc 2.36,
# libgcc-s1, libstdc++6, libgomp1, libssl3).
DISTROLESS_CC_LIBS = {
    "libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0", "librt.so.1", "libutil.so.1",
    "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1", "libgcc_s.so.1", "libstdc++.so.6",
    "libgomp.so.1", "libssl.so.3", "libcrypto.so.3",
}
DISTROLESS_GLIBC = (2, 36)
NONROOT_UID = 65532

passed = failed = skipped = 0


def check(name: str, condition: bool, detail: str = "") -> bool:
    global passed, failed
    if condition:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name}" + (f": {detail}" if detail else ""))
    return condition


def skip(name: str, why: str) -> None:
    global skipped
    skipped += 1
    print(f"skip {name}: {why}")


# --- Dockerfile ---------------------------------------------------------------------------


class Stage:
    def __init__(self, image: str, name: str | None):
        self.image = image
        self.name = name
        self.instructions: list[tuple[str, str]] = []

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse_dockerfile(text: str) -> list[Stage]:
    """Instructions per stage; comments dropped, backslash continuations joined."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    if current:
        logical.append(current)
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        args = args.strip()
        if keyword == "FROM":
            parts = [p for p in args.split() if not p.startswith("--")]
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name))
        elif stages:
            stages[-1].instructions.append((keyword, args))
    return stages


def strip_run_flags(args: str) -> str:
    """A RUN's command without its BuildKit flags (--mount=..., --network=..., --security=...)."""
    words = args.split()
    while words and words[0].startswith("--"):
        words.pop(0)
    return " ".join(words)


def exec_form(args: str) -> list[str] | None:
    import json

    try:
        value = json.loads(args)
    except ValueError:
        return None
    return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


def os_release() -> dict[str, str]:
    out = {}
    for line in Path("/etc/os-release").read_text().splitlines():
        key, _, value = line.partition("=")
        out[key] = value.strip('"')
    return out


def dockerignore_patterns() -> list[tuple[bool, str]]:
    patterns = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        patterns.append((negate, line.lstrip("!").strip("/")))
    return patterns


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: * and ? stay within a folder, ** spans folders."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def ignored(path: str, patterns: list[tuple[bool, str]]) -> bool:
    """Docker's rule: a path is left out of the context if it or a folder above it matches
    a pattern, the last matching pattern winning (a ! pattern brings it back)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for negate, pattern in patterns:
        regex = pattern_regex(pattern)
        if any(regex.fullmatch(p) for p in prefixes):
            result = not negate
    return result


def check_dockerfile() -> Stage | None:
    print("\n# Dockerfile")
    stages = parse_dockerfile(DOCKERFILE.read_text())
    if not check("multi-stage: a build stage and a runtime stage", len(stages) >= 2, f"{len(stages)} stage(s)"):
        return None
    build, runtime = stages[0], stages[-1]

    # The build stage is the build CI runs.
    match = re.fullmatch(r"(?:docker\.io/(?:library/)?)?rust:(\d+)\.(\d+)(?:\.\d+)?-(\w+)", build.image)
    check("build stage image is rust:<version>-<debian release>", match is not None, build.image)
    if match:
        rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True, check=False).stdout
        local = re.search(r"rustc (\d+)\.(\d+)", rustc)
        check(
            "build stage's Rust is this machine's (CI's) Rust",
            local is not None and (match[1], match[2]) == (local[1], local[2]),
            f"Dockerfile rust:{match[1]}.{match[2]}, this machine {rustc.strip() or 'has no rustc'}",
        )
        codename = os_release().get("VERSION_CODENAME", "?")
        check("build stage's Debian is this machine's (same gcc and glibc)", match[3] == codename, f"Dockerfile -{match[3]}, this machine {codename}")
    runs = [strip_run_flags(r) for r in build.all("RUN")]
    check(f"build stage runs exactly `{BUILD_COMMAND}`", runs == [BUILD_COMMAND], f"its RUN lines: {runs}")
    ci_text = CI_RUN.read_text() if CI_RUN.exists() else ""
    ci_lines = [line.split("#", 1)[0].strip() for line in ci_text.splitlines()]
    check(
        f".ci/run runs `{BUILD_COMMAND}` too",
        any(BUILD_COMMAND in line for line in ci_lines),
        f"{CI_RUN} is missing" if not ci_text else f"no line of {CI_RUN} runs it",
    )
    copies = build.all("COPY")
    check("build stage copies the whole context (so it builds what CI's checkout builds)", any(c.split()[-2:] == [".", "."] for c in copies), str(copies))

    # The context .dockerignore leaves must hold everything cargo reads.
    patterns = dockerignore_patterns()
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=False).stdout.split()
    needed = ["Cargo.toml", "Cargo.lock", "src/main.rs", "src/lib.rs"]
    needed += [p for p in tracked if p.startswith(("src/", "benches/", "examples/")) or p == "build.rs"]
    for source in (ROOT / "src").rglob("*.rs"):
        for included in re.findall(r'include_(?:str|bytes)!\(\s*"([^"]+)"', source.read_text()):
            target = (source.parent / included).resolve()
            if target.is_relative_to(ROOT):
                needed.append(str(target.relative_to(ROOT)))
    left_out = sorted({p for p in needed if ignored(p, patterns)})
    check(".dockerignore keeps every file cargo reads", not left_out, f"left out: {left_out}")
    check(".dockerignore leaves out target/ and .git/", ignored("target/release/keyless", patterns) and ignored(".git/HEAD", patterns))

    # The runtime stage.
    check(f"runtime stage is {RUNTIME_BASE}:nonroot", runtime.image == f"{RUNTIME_BASE}:nonroot", runtime.image)
    users = runtime.all("USER")
    user = users[-1].split(":")[0] if users else ""
    check(
        "runtime stage runs as a non-root user, by number (so runAsNonRoot can verify it)",
        user.isdigit() and int(user) != 0,
        f"USER {users[-1] if users else '(none: root)'}",
    )
    check("runtime stage runs no command (distroless has no shell)", not runtime.all("RUN"))
    entrypoint = exec_form(runtime.all("ENTRYPOINT")[-1]) if runtime.all("ENTRYPOINT") else None
    cmd = exec_form(runtime.all("CMD")[-1]) if runtime.all("CMD") else None
    check("ENTRYPOINT and CMD in exec form", entrypoint is not None and cmd is not None, f"{entrypoint} {cmd}")
    binary_copies = [c.split() for c in runtime.all("COPY") if c.startswith("--from=")]
    destinations = [words[-1] for words in binary_copies]
    sources = [words[-2] for words in binary_copies]
    check("ENTRYPOINT is the binary copied from the build stage", bool(entrypoint) and entrypoint[0] in destinations, f"{entrypoint} vs {destinations}")
    workdir = (build.all("WORKDIR") or ["/"])[-1]
    check(
        "the copied binary is where cargo build --release puts it",
        f"{workdir.rstrip('/')}/target/release/keyless" in sources,
        f"{sources}",
    )
    exposed = {int(p.split("/")[0]) for e in runtime.all("EXPOSE") for p in e.split()}
    listen = None
    if cmd and "--listen" in cmd and cmd.index("--listen") + 1 < len(cmd):
        listen = cmd[cmd.index("--listen") + 1]
    check("CMD listens on all interfaces", bool(listen) and listen.startswith("0.0.0.0:"), str(cmd))
    check(
        "CMD does not pass --allow-unauthenticated (issue 12.5: the user says what guards an open listener)",
        bool(cmd) and "--allow-unauthenticated" not in cmd,
        str(cmd),
    )
    check("EXPOSE is the port CMD listens on", bool(listen) and int(listen.rsplit(":", 1)[1]) in exposed, f"EXPOSE {sorted(exposed)}, listen {listen}")
    return runtime


# --- the binary CI built ------------------------------------------------------------------


def glibc_versions(binary: Path) -> list[tuple[int, ...]]:
    out = subprocess.run(["objdump", "-T", str(binary)], capture_output=True, text=True, check=False).stdout
    return sorted({tuple(int(x) for x in v.split(".")) for v in re.findall(r"GLIBC_(\d+(?:\.\d+)+)", out)})


def can_make_read_only_root() -> bool:
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", "mount -o remount,bind,ro / && ! touch /.keyless-ro-probe 2>/dev/null"],
        capture_output=True, check=False,
    )
    return probe.returncode == 0


def check_binary(runtime: Stage | None) -> None:
    print("\n# the release binary, as the image runs it")
    if not BINARY.exists():
        skip("binary checks", f"{BINARY.relative_to(ROOT)} not built (run `{BUILD_COMMAND}` first)")
        return
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", subprocess.run(["readelf", "-d", str(BINARY)], capture_output=True, text=True, check=False).stdout)
    check("links only libraries distroless cc has", bool(needed) and set(needed) <= DISTROLESS_CC_LIBS, f"needs {needed}")
    versions = glibc_versions(BINARY)
    newest = versions[-1] if versions else (0,)
    check(
        f"needs no glibc newer than distroless cc-debian12's {'.'.join(map(str, DISTROLESS_GLIBC))}",
        newest <= DISTROLESS_GLIBC,
        f"needs GLIBC_{'.'.join(map(str, newest))}",
    )

    # Run it as the image does: ENTRYPOINT + CMD (+ --simulate, so no Azure is needed), the
    # listen address moved to an ephemeral loopback port.
    entrypoint = exec_form((runtime.all("ENTRYPOINT") or ["[]"])[-1]) if runtime else None
    cmd = exec_form((runtime.all("CMD") or ["[]"])[-1]) if runtime else None
    if not entrypoint or not cmd or "--listen" not in cmd:
        skip("run as the image does", "no usable ENTRYPOINT/CMD")
        return
    args = list(cmd)
    args[args.index("--listen") + 1] = "127.0.0.1:0"
    args.append("--simulate")
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)
        binary = Path(tmp) / "keyless"
        shutil.copy2(BINARY, binary)
        os.chmod(binary, 0o755)
        drop_privileges = [
            "setpriv", f"--reuid={NONROOT_UID}", f"--regid={NONROOT_UID}", "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs",
        ]
        # The distroless image's environment, and nothing else.
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/home/nonroot", "SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt"}
        command = drop_privileges + [str(binary)] + args
        read_only = os.geteuid() == 0 and shutil.which("unshare") is not None and can_make_read_only_root()
        if read_only:
            # Every mount but the kernel's own file systems read-only, as readOnlyRootFilesystem does.
            script = (
                "set -e; "
                "awk '{print $2}' /proc/self/mounts | grep -Ev '^/(proc|sys|dev)(/|$)' | sort -r | "
                "while read -r m; do mount -o remount,bind,ro \"$m\" 2>/dev/null || true; done; "
                "mount -o remount,bind,ro /; exec " + shlex.join(command)
            )
            command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
        else:
            skip("read-only root filesystem", "cannot make a mount namespace here; running on the writable one")
        description = f"as uid {NONROOT_UID}, no capabilities, empty environment" + (", read-only root" if read_only else "")
        process = subprocess.Popen(command, cwd="/", env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            address = None
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and process.poll() is None:
                line = process.stdout.readline()
                found = re.search(r"listening on (http://\S+)", line)
                if found:
                    address = found[1]
                    break
            if not check(f"starts {description}", address is not None, f"exit code {process.poll()}, stderr: {process.stderr.read() if process.poll() is not None else ''}"):
                return
            try:
                with urllib.request.urlopen(f"{address}/healthz", timeout=5) as response:
                    status = response.status
            except Exception as error:  # noqa: BLE001
                status = f"{type(error).__name__}: {error}"
            check(f"answers /healthz with 200 {description}", status == 200, str(status))
            process.send_signal(signal.SIGTERM)
            try:
                code = process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                code = None
            check("exits 0 on SIGTERM", code == 0, f"exit code {code}")
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def check_open_listener_refused(runtime: Stage | None) -> None:
    """The image's default command, run bare, refuses to serve all interfaces without app keys."""
    print("\n# the default command without app keys")
    if not BINARY.exists():
        skip("the default command refuses an open listener", f"{BINARY.relative_to(ROOT)} not built")
        return
    cmd = exec_form((runtime.all("CMD") or ["[]"])[-1]) if runtime else None
    if not cmd or "--listen" not in cmd:
        skip("the default command refuses an open listener", "no usable CMD")
        return
    help_text = subprocess.run([str(BINARY), "serve", "--help"], capture_output=True, text=True, check=False, timeout=30).stdout
    if "--allow-unauthenticated" not in help_text:
        skip("the default command refuses an open listener", "this keyless has no --allow-unauthenticated yet (issue 12.5)")
        return
    # All interfaces, as the image does, but port 0: nothing fixed is taken, and the check
    # is refused before any socket is bound.
    args = list(cmd)
    args[args.index("--listen") + 1] = "0.0.0.0:0"
    args.append("--simulate")
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp"}
    try:
        run = subprocess.run([str(BINARY)] + args, env=env, capture_output=True, text=True, check=False, timeout=20)
        outcome = (run.returncode, run.stdout + run.stderr)
    except subprocess.TimeoutExpired as error:
        outcome = (None, f"still running after 20 s: {error}")
    code, output = outcome
    check("the default command exits non-zero on 0.0.0.0 without app keys", code not in (0, None), f"exit code {code}: {output}")
    check("its message names --allow-unauthenticated", "--allow-unauthenticated" in output, output)


def main() -> int:
    runtime = None
    try:
        runtime = check_dockerfile()
    except Exception as error:  # noqa: BLE001
        check("Dockerfile checks ran to the end", False, f"{type(error).__name__}: {error}")
    try:
        check_binary(runtime)
    except Exception as error:  # noqa: BLE001
        check("binary checks ran to the end", False, f"{type(error).__name__}: {error}")
    try:
        check_open_listener_refused(runtime)
    except Exception as error:  # noqa: BLE001
        check("default command checks ran to the end", False, f"{type(error).__name__}: {error}")
    print(f"\n{passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
