"""What the GPU check sections share: PASS/FAIL lines collected for their JSON, and timed commands whose output
is shown only when they fail. Each section runs as its own process, so the module's lists are that section's."""
import os
import subprocess
import time

results: list[tuple[str, bool]] = []  # (check, passed), in the order checked
seconds: dict[str, float] = {}  # label -> wall time of each command run


def check(name, ok, detail=""):
    results.append((name, bool(ok)))
    print(("PASS " if ok else "FAIL ") + name + (f": {detail}" if detail else ""), flush=True)


def run(args, label=None, env=None):
    """Run a command (``env``: its whole environment, default this process's), time it under ``label``."""
    label = label or args[0]
    t = time.time()
    r = subprocess.run(args, capture_output=True, text=True, env=env or os.environ.copy())
    seconds[label] = time.time() - t
    print(f"--- {label} rc={r.returncode} {seconds[label]:.1f}s", flush=True)
    if r.returncode:
        print(r.stdout[-2500:], r.stderr[-2500:], flush=True)
    return r
