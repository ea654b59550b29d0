"""The one exception the input pipeline raises for unusable or missing data."""


class DatasetError(Exception):
  """Data is missing, truncated or corrupt.

  The message is a single line that names the file or dataset and says how to
  fix it, so an entry point can print it and exit without a traceback.
  """
