"""What protects the data: DP-SGD, accountants, the site ledger, secure aggregation, audit."""
