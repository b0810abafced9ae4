from raytune_opt.cli import main

raise SystemExit(main())
