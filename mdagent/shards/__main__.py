from mdagent.shards.child import main

raise SystemExit(main())
