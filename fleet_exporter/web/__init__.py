"""The HTTP layer: routes (``app``), ``/probe`` (``probe``), the pages (``pages``) and the
web config (``webconfig``). The work is elsewhere; this package only answers requests."""
