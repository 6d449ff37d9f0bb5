"""The entry points: the ``dicomstl`` command (``convert``, ``inspect``, the service's
processes, ``apikey``, ``submit``), the launcher that runs the processes and keeps them alive,
and the API client. The only package that imports all the others; nothing imports it."""
