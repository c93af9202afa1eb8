"""python -m sslsv.cli: the same as the `sslsv` command."""
from sslsv.cli import main

raise SystemExit(main())
