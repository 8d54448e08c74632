"""`python -m multistream.predict VIDEO --models RUN`: one video through a trained run (no Ray)."""

from multistream.predict.single import main

raise SystemExit(main())
