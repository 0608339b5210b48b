from mdagent.entry import main

raise SystemExit(main())
