from circuitlens.cli import main

raise SystemExit(main())
