"""`python -m openharmony ...`, the same as the `openharmony` console script."""

from .cli import main

if __name__ == "__main__":
    main()
