from sammoe.cli import main

raise SystemExit(main())
