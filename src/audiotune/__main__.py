"""``python -m audiotune`` (also what ``accelerate launch -m audiotune`` runs)."""

from .cli import main

main()
