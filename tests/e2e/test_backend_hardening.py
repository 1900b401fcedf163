"""Issue 21: every state format is read, listed and cleaned; unknown stack files are never
skipped; a live update's lock survives a takeover from another PID namespace on the same
host; a failed update says why in one line; a start whose stack is removed under it
creates it again. All through `python -m cli`."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from preview_stack import backends, naming
from testbed import Testbed
from tests.support.cli import Cli, cli_argv, start_argv
from tests.support.kube import Kube, objects_of, previews
from tests.support.paths import REPO
from tests.support.polling import wait_until
from tests.support.processes import kill_process_group
from tests.support.teams import Backend, User, make_backend
from tests.support.workloads import apply_unschedulable_target

pytestmark = pytest.mark.cluster
ZSTD = {"PULUMI_DIY_BACKEND_ZSTD": "true"}


def _stacks_dir(user: User) -> Path:
    return Path(user.backend.url.removeprefix("file://")) / ".pulumi/stacks/preview-env"


def _failing_pulumi(tmp_path: Path, user: User) -> dict[str, str]:
    """PATH with a `pulumi` that fails first: what asks it cannot answer."""
    broken = tmp_path / "no-pulumi"
    broken.mkdir(exist_ok=True)
    (broken / "pulumi").write_text("#!/bin/sh\necho no pulumi here >&2\nexit 1\n")
    (broken / "pulumi").chmod(0o755)
    return {"PATH": f"{broken}:{user.env()['PATH']}"}


@pytest.mark.parametrize("kind", ["file", "s3"])
def test_zstd_state_is_listed_read_reaped_and_cleaned(
    kind: str,
    kube: Kube,
    staging: str,
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
) -> None:
    """PULUMI_DIY_BACKEND_ZSTD=true (Pulumi >= 3.224) writes `<stack>.json.zst`."""
    backend = make_backend(kind, request, tmp_path_factory.mktemp("zstd"))
    ann = User("ann", "ann-host", backend, tmp_path)
    live, due = f"zs-{kind}-live", f"zs-{kind}-due"
    first = ann.run(*start_argv("users", live, "--ttl", "1h"), env=ZSTD)
    assert first.code == 0, first.stderr
    second = ann.run(*start_argv("orders", due, "--ttl", "2s"), env=ZSTD)
    assert second.code == 0, second.stderr
    if kind == "file":
        names = {p.name for p in _stacks_dir(ann).iterdir()}
        assert f"{live}.json.zst" in names and f"{live}.json" not in names, names

    shown = ann.run("status", "-o", "json", env=ZSTD)
    assert shown.code == 0, shown.stderr
    envs = {e["key"]: e for e in shown.json()}
    assert envs[live]["state"] in ("ready", "starting"), envs[live]
    assert [p["target"] for p in envs[live]["pods"]] == ["deployment/users"], envs[live]

    time.sleep(3)
    reaped = ann.run("reap", "-o", "json", env=ZSTD)
    assert reaped.code == 0, reaped.stderr
    outcomes = {r["key"]: r["outcome"] for r in json.loads(reaped.stdout)["results"]}
    assert outcomes == {due: "reaped"}, outcomes

    cleaned = ann.run("clean", "-k", live, "-o", "json", env=ZSTD)
    assert cleaned.code == 0 and cleaned.json()["cleaned"] is True, cleaned.stdout
    assert not {live, due} & backend.stack_keys()
    assert wait_until(lambda: objects_of(kube, live) == [] and objects_of(kube, due) == [])


def test_an_unknown_or_corrupt_stack_file_is_never_skipped(
    kube: Kube,
    staging: str,
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
) -> None:
    backend = make_backend("file", request, tmp_path_factory.mktemp("unknown"))
    ann = User("ann", "ann-host", backend, tmp_path)
    key = "unk-live"
    assert ann.run(*start_argv("users", key)).code == 0
    stacks = _stacks_dir(ann)

    # A file no known name fits: said on stderr, and `pulumi` (the authority) lists.
    (stacks / "ghost.json.foo").write_bytes(b"?")
    shown = ann.run("status", "-o", "json")
    assert shown.code == 0, shown.stderr
    assert "ghost.json.foo" in shown.stderr and "asking `pulumi`" in shown.stderr
    assert key in {e["key"] for e in shown.json()}
    # ... so where `pulumi` cannot answer, the listing fails instead of skipping anything.
    broken = _failing_pulumi(tmp_path, ann)
    for args in (["status"], ["reap", "--dry-run"], ["clean", "--glob", "unk-*", "--yes"]):
        failed = ann.run(*args, env=broken)
        assert failed.code == 1, (args, failed.stdout, failed.stderr)
        assert "ghost.json.foo" in failed.stderr, (args, failed.stderr)
        assert failed.stderr.strip().splitlines()[-1].startswith("error: "), failed.stderr
    (stacks / "ghost.json.foo").unlink()

    # A checkpoint that cannot be read: shown as such, a failure of the reaper's round.
    (stacks / "broken.json.zst").write_bytes(b"\x28\xb5\x2f\xfd not zstd at all")
    shown = ann.run("status", "-o", "json")
    assert shown.code == 0, shown.stderr
    [broken_env] = [e for e in shown.json() if e["key"] == "broken"]
    assert broken_env["state"] == "not-ready", broken_env
    assert "cannot read its spec" in broken_env["reason"], broken_env
    reaped = ann.run("reap", "-o", "json")
    assert reaped.code == 1, reaped.stderr
    [failed_reap] = [r for r in json.loads(reaped.stdout)["results"] if r["key"] == "broken"]
    assert failed_reap["outcome"] == "failed", failed_reap
    cleaned = ann.run("clean", "-k", "broken", env={"PREVIEW_ENV_LOCK_WAIT": "5"})
    assert cleaned.code == 1, cleaned.stderr
    last = cleaned.stderr.strip().splitlines()[-1]  # progress lines come first
    assert last.startswith("error: ") and "failed to load checkpoint" in last, cleaned.stderr
    (stacks / "broken.json.zst").unlink()
    assert ann.run("clean", "-k", key).code == 0


def _free_pids(count: int = 2000) -> int:
    """The first PID of a range no process here uses: a namespace that starts its PIDs
    there holds PIDs that look dead from this namespace."""
    top = int(Path("/proc/sys/kernel/pid_max").read_text())
    used = {int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()}
    for first in range(top - count - 10, 1000, -count):
        if not any(first <= pid < first + count for pid in used):
            return first
    pytest.skip("no free PID range")


def test_a_live_holder_in_another_pid_namespace_on_the_same_host_keeps_its_lock(
    kube: Kube,
    staging: str,
    testbed: Testbed,
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
) -> None:
    """Two CI jobs in containers of one runner: same host name, own PID namespaces. The
    one holding the lock is alive; the other must wait, not take its lock over."""
    backend = make_backend("file", request, tmp_path_factory.mktemp("pidns"))
    apply_unschedulable_target(testbed, "pidns-hang")
    key = "pidns-lock"
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    holder = User("ci", "ci-runner", backend, tmp_path / "a")
    first_pid = _free_pids()
    log = (tmp_path / "holder.log").open("w")
    proc = subprocess.Popen(
        [
            "unshare",
            "--pid",
            "--fork",
            "--mount-proc",
            "--uts",
            "sh",
            "-c",
            'hostname "$0" && echo "$1" > /proc/sys/kernel/ns_last_pid && shift && exec "$@"',
            holder.host,
            str(first_pid),
            *cli_argv(*start_argv("pidns-hang", key, "--timeout", "300")),
        ],
        env=holder.env(),
        cwd=REPO,
        text=True,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    locks = Path(backend.url.removeprefix("file://")) / ".pulumi/locks/organization/preview-env"
    try:
        assert wait_until(lambda: bool(previews(kube, key)), timeout=120), (
            tmp_path / "holder.log"
        ).read_text()
        [lock_file] = list((locks / key).glob("*.json"))
        lock = json.loads(lock_file.read_text())
        assert lock["hostname"] == "ci-runner"
        # From here the holder's PID names no process: exactly what fooled the old rule.
        assert lock["pid"] > first_pid and not Path(f"/proc/{lock['pid']}").exists()

        other = User("ci2", "ci-runner", backend, tmp_path / "b")
        busy = other.run("clean", "-k", key, env={"PREVIEW_ENV_LOCK_WAIT": "5"})
        assert busy.code == 1, busy.stdout + busy.stderr
        assert "ci-runner" in busy.stderr and "locked" in busy.stderr, busy.stderr
        assert lock_file.exists()  # the live update's lock is still there
        assert proc.poll() is None and previews(kube, key)
        # Nor does a start (its default stale-lock rule) take it over.
        added = other.run(*start_argv("orders", key), env={"PREVIEW_ENV_LOCK_WAIT": "5"})
        assert added.code == 1 and "locked" in added.stderr, added.stderr
        assert lock_file.exists() and proc.poll() is None
    finally:
        kill_process_group(proc)
        log.close()
    # The dead namespace's lock proves nothing either: removed by hand, then cleaned.
    for stale in (locks / key).glob("*.json"):
        stale.unlink()
    cleaned = User("ci3", "ci-runner", backend, tmp_path / "b").run("clean", "-k", key)
    assert cleaned.code == 0, cleaned.stderr
    assert wait_until(lambda: objects_of(kube, key) == [])


def test_a_failed_update_says_why_in_one_line(cli: Cli, staging: str, testbed: Testbed) -> None:
    """pulumi-kubernetes reports a Deployment that never gets Ready as "3 errors occurred:"
    followed by the errors: the line must carry them."""
    apply_unschedulable_target(testbed, "why-fails")
    key = "why-fails"
    started = cli(*start_argv("why-fails", key, "--timeout", "8"))
    assert started.code == 1
    [line] = started.stderr.strip().splitlines()[-1:]
    assert line.startswith("error: ") and "errors occurred" not in line, started.stderr
    assert f"pulumi failed for '{key}': " in line, line
    cause = line.split(f"pulumi failed for '{key}': ", 1)[1]
    assert "why-fails" in cause and ("Ready" in cause or "timed out" in cause), line
    assert cli("clean", "-k", key).code == 0


def test_a_start_whose_stack_is_removed_before_its_update_creates_it_again(
    cli: Cli, kube: Kube, staging: str, tmp_path: Path
) -> None:
    """Issue 21 item 12 made deterministic: a `clean` (or the reaper) removes the stack
    between the start's selection or creation and its update, twice in a row (a clean,
    then the reaper removing the empty stack the start had just created again)."""
    key = "race-rm"
    real = shutil.which("pulumi")
    assert real
    wrapper = tmp_path / "bin"
    wrapper.mkdir()
    count = tmp_path / "removed"
    (wrapper / "pulumi").write_text(
        "#!/bin/sh\n"
        'case " $* " in *" up "*)\n'
        f'  n=$(cat "{count}" 2>/dev/null || echo 0)\n'
        '  if [ "$n" -lt 2 ]; then\n'
        f'    echo $((n + 1)) > "{count}"\n'
        f'    "{real}" stack rm --yes --force --non-interactive --stack "{key}" >/dev/null 2>&1\n'
        "  fi;;\n"
        "esac\n"
        f'exec "{real}" "$@"\n'
    )
    (wrapper / "pulumi").chmod(0o755)
    path = {"PATH": f"{wrapper}:{os.environ['PATH']}"}
    started = cli(*start_argv("users", key), env=path)
    assert count.read_text().strip() == "2"  # removed twice under it
    assert started.code == 0, started.stderr
    assert set(previews(kube, key)) == {f"users-{key}"}
    shown = cli("status", "-k", key, "-o", "json")
    assert [e["key"] for e in shown.json()] == [key], shown.stdout
    assert cli("clean", "-k", key).code == 0
    assert wait_until(lambda: objects_of(kube, key) == [])


class _PassphrasePipe:
    """PULUMI_CONFIG_PASSPHRASE_FILE as a named pipe served by a thread of this test: every
    `pulumi` waits, when it reads its passphrase, until the pipe is written. `pulumi up`
    reads it after it selected its stack and before it takes the stack's lock
    (cmd/pulumi/operations/up.go: RequireStack, GetStackConfiguration, then UpdateStack),
    so `before_up` runs exactly in that window, once, with that `up` waiting."""

    def __init__(self, path: Path, passphrase: str, before_up: Callable[[], None]) -> None:
        self.path, self.passphrase, self.before_up = path, passphrase, before_up
        self.served: list[list[str]] = []  # the argv of each reader, in order
        self.ran_before: list[str] = []  # the argv of the `up` that `before_up` ran under
        self.failure: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> _PassphrasePipe:
        os.mkfifo(self.path, 0o600)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _readers(self) -> list[list[str]]:
        """The argv of every other process holding the pipe open."""
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                if any(os.readlink(fd) == str(self.path) for fd in (proc / "fd").iterdir()):
                    found.append((proc / "cmdline").read_bytes().decode().split("\0"))
            except OSError:
                continue  # gone, or not ours to read
        return found

    def _serve(self) -> None:
        try:
            while not self._stop.is_set():
                try:  # succeeds once a reader is opening the pipe
                    fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
                except OSError as exc:
                    if exc.errno != errno.ENXIO:
                        raise
                    time.sleep(0.02)
                    continue
                try:
                    assert wait_until(lambda: bool(self._readers()), timeout=10)
                    readers = self._readers()
                    assert len(readers) == 1, readers  # one reader at a time, or it is unclear
                    self.served.append(readers[0])
                    if not self.ran_before and "up" in readers[0]:
                        self.before_up()
                        self.ran_before = readers[0]
                    os.write(fd, f"{self.passphrase}\n".encode())
                finally:
                    os.close(fd)
                wait_until(lambda: not self._readers(), timeout=30)  # it read to the end
        except BaseException as exc:  # said by the test
            self.failure = exc


def test_a_start_whose_stack_is_removed_after_pulumi_selected_it_creates_it_again(
    team: Callable[[str], User], backend: Backend, kube: Kube, staging: str, tmp_path: Path
) -> None:
    """A teammate's `clean` removes the stack after `pulumi up` selected it and before it
    took the lock (as in the stress test: a start waiting for a clean's lock). Pulumi's
    self-managed backends do not say "no stack named" then: their update panics (diy
    getTarget calls Snapshot on the nil stack GetStack returns for a missing checkpoint).
    The start must create the stack again and succeed, on every backend kind."""
    key = f"rm-up-{backend.kind}"
    ann = team("ann")
    secret = backend.env["PULUMI_CONFIG_PASSPHRASE"]
    stack = f"{backends.ORGANIZATION}/{naming.PROJECT}/{key}"

    def remove() -> None:
        removed = subprocess.run(
            ["pulumi", "stack", "rm", "--yes", "--non-interactive", "--stack", stack],
            capture_output=True,
            text=True,
            env={**ann.env(), "PULUMI_CONFIG_PASSPHRASE": secret},
            cwd=tmp_path,
            timeout=120,
            check=False,
        )
        assert removed.returncode == 0, removed.stderr

    env = {k: v for k, v in ann.env().items() if k != "PULUMI_CONFIG_PASSPHRASE"}
    with _PassphrasePipe(tmp_path / "passphrase", secret, remove) as pipe:
        env["PULUMI_CONFIG_PASSPHRASE_FILE"] = str(pipe.path)
        started = subprocess.run(
            ann.argv(*start_argv("users", key)),
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            timeout=600,
            check=False,
        )
    assert pipe.failure is None, repr(pipe.failure)
    assert pipe.ran_before, pipe.served  # removed under a waiting `pulumi up`
    # ... which failed; a second `up` deployed to the stack created again
    assert len([argv for argv in pipe.served if "up" in argv]) == 2, pipe.served
    assert started.returncode == 0, started.stderr
    assert set(previews(kube, key)) == {f"users-{key}"}
    assert key in backend.stack_keys()
    shown = ann.run("status", "-k", key, "-o", "json")
    assert [e["key"] for e in shown.json()] == [key], shown.stdout
    assert ann.run("clean", "-k", key).code == 0
    assert wait_until(lambda: objects_of(kube, key) == [])
