"""askdraft: teach a small student to answer StrategyQA by drafting clarifying questions first."""
import os
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
__version__ = "0.1.0"


def git_commit(repo=REPO_ROOT):
    """HEAD of the checkout, or ASKDRAFT_COMMIT where the code runs from a copy (GPU host)."""
    if os.environ.get("ASKDRAFT_COMMIT"):
        return os.environ["ASKDRAFT_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
