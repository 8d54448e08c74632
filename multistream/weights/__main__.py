from multistream.weights.prepare import main

raise SystemExit(main())
