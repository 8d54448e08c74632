"""`python -m multistream.report RUN_ROOT`: rewrite the run's reports/report.html."""

from multistream.report.page import main

main()
