from dgmbook.cli import main

raise SystemExit(main())
