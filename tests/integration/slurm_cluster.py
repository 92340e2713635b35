"""A real SLURM cluster on this machine for the tests: munged, slurmctld and one slurmd per node.

The nodes n1, n2, ... all run on localhost (each its own slurmd on its own port), so a job can span
"several nodes". Their names do not resolve: jobs reach each other at 127.0.0.1. Everything (key,
sockets, state, logs, slurm.conf) lives in one scratch folder and the daemons listen on free ports,
so the cluster neither needs nor touches a system-wide SLURM setup. Needs root (SlurmUser=root)
and Debian's slurmctld, slurmd, slurm-client and munge packages.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PROGRAMS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol", "sinfo")


def missing_reason() -> str | None:
    """Why a local cluster cannot start here, or None."""
    absent = [name for name in PROGRAMS if shutil.which(name) is None]
    if absent:
        return f"SLURM/munge not installed (missing {', '.join(absent)}; .ci/run installs them)"
    if os.geteuid() != 0:
        return "the local SLURM cluster runs its daemons as root"
    return None


def _free_ports(count: int) -> int:
    """The first of ``count`` consecutive ports that are free now."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = probe.getsockname()[1]
        try:
            for port in range(first, first + count):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
    raise RuntimeError(f"no {count} consecutive free ports")


class LocalSlurm:
    """Start with ``start()``; ``env`` is the environment for sbatch/srun; ``stop()`` ends it."""

    def __init__(self, root: Path, nodes: int = 2, cpus_per_node: int = 2) -> None:
        self.root = root
        self.nodes = [f"n{i}" for i in range(1, nodes + 1)]
        self.cpus = cpus_per_node  # claimed, whatever the machine has (config_overrides)
        self.processes: list[subprocess.Popen] = []
        self.munge_dir: Path | None = None
        self.env: dict[str, str] = {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}

    def start(self, timeout: float = 60) -> None:
        munge_socket = self._start_munge()
        self._write_conf(munge_socket)
        self._spawn(["slurmctld", "-D"], "slurmctld.out")
        for node in self.nodes:
            self._spawn(["slurmd", "-D", "-N", node], f"slurmd-{node}.out")
        deadline = time.time() + timeout
        while time.time() < deadline:
            states = subprocess.run(
                ["sinfo", "-h", "-N", "-o", "%t"], env=self.env, capture_output=True, text=True
            ).stdout.split()
            if states == ["idle"] * len(self.nodes):
                return
            if any(p.poll() is not None for p in self.processes):
                break
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"local SLURM did not come up; logs in {self.root}:\n{self.logs()}")

    def _start_munge(self) -> Path:
        key_dir = self.root / "munge-key"
        key_dir.mkdir(mode=0o700)
        # munged wants every folder above its socket open to all (pytest's are 0700): one in /tmp.
        run_dir = self.munge_dir = Path(tempfile.mkdtemp(prefix="clipkit-munge-"))
        run_dir.chmod(0o755)
        key = key_dir / "munge.key"
        subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True, capture_output=True)
        key.chmod(0o600)
        munge_socket = run_dir / "munge.socket"
        self._spawn(
            [
                "munged",
                "-F",
                f"--key-file={key}",
                f"--socket={munge_socket}",
                f"--pid-file={run_dir / 'munged.pid'}",
                f"--seed-file={run_dir / 'munged.seed'}",
                f"--log-file={self.root / 'munged.log'}",
            ],
            "munged.out",
        )
        deadline = time.time() + 20
        while not munge_socket.exists():
            if time.time() > deadline or self.processes[-1].poll() is not None:
                raise RuntimeError(f"munged did not start:\n{self.logs()}")
            time.sleep(0.1)
        return munge_socket

    def _write_conf(self, munge_socket: Path) -> None:
        root = self.root
        for node in self.nodes:
            (root / "spool" / node).mkdir(parents=True)
        (root / "state").mkdir()
        first_slurmd_port = _free_ports(len(self.nodes))
        node_list = f"n[1-{len(self.nodes)}]"
        slurmd_ports = f"[{first_slurmd_port}-{first_slurmd_port + len(self.nodes) - 1}]"
        node_line = (
            f"NodeName={node_list} NodeHostname=localhost NodeAddr=127.0.0.1 Port={slurmd_ports} "
            f"CPUs={self.cpus} Boards=1 SocketsPerBoard=1 CoresPerSocket={self.cpus} ThreadsPerCore=1"
        )
        (root / "slurm.conf").write_text(f"""\
ClusterName=clipkit-test
SlurmctldHost=localhost
SlurmctldPort={_free_ports(1)}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root / "state"}
SlurmdSpoolDir={root / "spool" / "%n"}
SlurmctldPidFile={root / "slurmctld.pid"}
SlurmdPidFile={root / "slurmd-%n.pid"}
SlurmctldLogFile={root / "slurmctld.log"}
SlurmdLogFile={root / "slurmd-%n.log"}
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmdParameters=config_overrides
{node_line}
PartitionName=debug Nodes={node_list} Default=YES MaxTime=INFINITE State=UP
""")

    def _spawn(self, command: list[str], log_name: str) -> None:
        with open(self.root / log_name, "w") as log:
            self.processes.append(subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT))

    def wait_for_job(self, job_id: str, timeout: float) -> dict[str, str]:
        """Poll until the job has left the queue; its final fields from ``scontrol show job``."""
        deadline = time.time() + timeout
        while subprocess.run(
            ["squeue", "-h", "-j", job_id], env=self.env, capture_output=True, text=True
        ).stdout.strip():
            if time.time() > deadline:
                subprocess.run(["scancel", job_id], env=self.env)
                raise TimeoutError(f"job {job_id} still queued or running after {timeout} s")
            time.sleep(0.5)
        shown = subprocess.run(
            ["scontrol", "show", "job", job_id], env=self.env, capture_output=True, text=True, check=True
        ).stdout
        return dict(field.split("=", 1) for field in shown.split() if "=" in field)

    def job_state(self, job_id: str) -> str:
        return subprocess.run(
            ["squeue", "-h", "-j", job_id, "-o", "%T"], env=self.env, capture_output=True, text=True
        ).stdout.strip()

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text()[-2000:]}"
            for p in sorted(self.root.glob("*.log")) + sorted(self.root.glob("*.out"))
        )

    def stop(self) -> None:
        # Let the last job step's slurmstepd exit (~2 s), then end the daemons by the PIDs started here.
        deadline = time.time() + 10
        while (
            time.time() < deadline and subprocess.run(["pgrep", "-x", "slurmstepd"], capture_output=True).stdout.strip()
        ):
            time.sleep(0.2)
        for process in reversed(self.processes):
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.munge_dir is not None:
            shutil.rmtree(self.munge_dir, ignore_errors=True)
