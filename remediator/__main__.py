from remediator import cli

raise SystemExit(cli.main())
