"""`python -m mobilenetv2` is the `mobilenetv2` command."""

from mobilenetv2.cli import main

raise SystemExit(main())
