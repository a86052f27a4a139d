"""askdraft: teach a small student to answer StrategyQA by drafting clarifying questions first."""
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
__version__ = "0.1.0"
