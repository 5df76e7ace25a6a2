"""Runner processes for the chaos runs: started, SIGKILLed and replaced, stopped at the end."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any


@dataclass(eq=False)
class RunnerProcess:
    proc: subprocess.Popen[bytes]
    log_path: Path
    log: IO[str]

    _ready: bool = False

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def ready(self) -> bool:
        """Connected and serving (it logged "runner ready")."""
        if not self._ready:
            self._ready = '"runner ready"' in self.log_path.read_text(errors="replace")
        return self._ready

    def lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    lines.append(json.loads(line))
                except ValueError:
                    continue  # the last line of a SIGKILLed runner may be cut short
        return lines


@dataclass
class Fleet:
    """`size` runner processes against one database; every one started is kept for its log."""

    url: str
    logdir: Path
    env: dict[str, str] = field(default_factory=dict)
    seed: int = 0
    started: list[RunnerProcess] = field(default_factory=list)
    killed: list[RunnerProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.random = random.Random(self.seed)
        self.logdir.mkdir(parents=True, exist_ok=True)

    @property
    def alive(self) -> list[RunnerProcess]:
        return [r for r in self.started if r.alive]

    def start(self) -> RunnerProcess:
        environment = {
            **os.environ,
            "CONVEYOR_DATABASE_URL": self.url,
            "CONVEYOR_ALLOW_PRIVATE_NETWORKS": "127.0.0.1/32",
            "CONVEYOR_POLL_INTERVAL": "0.5",
            "CONVEYOR_HEARTBEAT_INTERVAL": "2",
            "CONVEYOR_LOG_LEVEL": "INFO",
            **self.env,
        }
        log_path = self.logdir / f"runner{len(self.started)}.log"
        log = log_path.open("w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "conveyor.cli", "run"],
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        runner = RunnerProcess(proc, log_path, log)
        self.started.append(runner)
        return runner

    def kill_one(self) -> None:
        """SIGKILL a random live runner (one that is serving, if any is) and start a new one
        in its place."""
        alive = self.alive
        serving = [r for r in alive if r.ready]
        if alive:
            victim = self.random.choice(serving or alive)
            victim.proc.kill()
            victim.proc.wait()
            victim.log.close()
            self.killed.append(victim)
        self.start()

    def stop(self, timeout: float = 60.0) -> dict[int, int]:
        """SIGTERM every live runner and wait; returns exit codes by pid (SIGKILL after timeout).
        A runner still starting up is given time to become ready first (before that, it has
        no SIGTERM handler yet)."""
        codes: dict[int, int] = {}
        running = self.alive
        deadline = time.monotonic() + timeout
        while not all(r.ready or not r.alive for r in running) and time.monotonic() < deadline:
            time.sleep(0.1)
        for runner in running:
            runner.proc.send_signal(signal.SIGTERM)
        for runner in running:
            try:
                codes[runner.proc.pid] = runner.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                runner.proc.kill()
                codes[runner.proc.pid] = runner.proc.wait()
        for runner in self.started:
            runner.log.close()
        return codes

    def cleanup(self) -> None:
        """Leave no process behind (after a failure)."""
        for runner in self.started:
            if runner.alive:
                runner.proc.kill()
                runner.proc.wait()
            runner.log.close()

    def messages(self, text: str) -> int:
        """How many log lines of all runners, killed ones included, have this message."""
        return sum(1 for runner in self.started for line in runner.lines() if line.get("msg") == text)

    def warnings(self) -> dict[str, int]:
        """Warning lines of all runners, counted by message."""
        counts: dict[str, int] = {}
        for runner in self.started:
            for line in runner.lines():
                if line.get("level") == "warning":
                    counts[str(line.get("msg"))] = counts.get(str(line.get("msg")), 0) + 1
        return counts

    def errors(self) -> list[dict[str, Any]]:
        return [line for runner in self.started for line in runner.lines() if line.get("level") == "error"]
