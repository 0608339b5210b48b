from mdagent.cli import main

raise SystemExit(main())
