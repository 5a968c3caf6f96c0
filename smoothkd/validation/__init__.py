"""Data validation with Great Expectations 1.x: every split is checked before anything trains.

`validate.validate_splits` (imports GX, ~4 s) runs the suites of `suites.py` over a prepared dataset's rows
(`smoothkd.stages.validate_dataset` reads them) and builds a Data Docs site; `report` holds the outcome and
raises `smoothkd.errors.DataValidationError`, without importing GX.
"""
