"""python -m sslsv (and torchrun -m sslsv): the same as the `sslsv` command."""
from sslsv.cli import main

raise SystemExit(main())
