"""Where the team's third-party corpus lies: ../shared/corpus beside the repository.

Tests that read it skip visibly when it is absent; its files are never copied here.
"""

from pathlib import Path

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
