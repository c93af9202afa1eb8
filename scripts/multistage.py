"""Multi-stage pseudo-labelling: python scripts/multistage.py configs/multistage/demo.yml [key=value ...]."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sslsv.pseudo_labels.multistage import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
