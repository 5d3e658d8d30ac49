from instaseg.cli.main import main

raise SystemExit(main())
