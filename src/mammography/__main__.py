from mammography.cli import main

raise SystemExit(main())
