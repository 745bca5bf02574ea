"""Prefect flows and deployments around the :mod:`metnet` library (which never imports
Prefect): ``ingest``, ``forecast``, ``backfill``, ``export``, ``train`` and ``demo``
flows, ``deploy`` (``metnet serve``) with its validated YAML file (``serve_config``),
and ``prefect.yaml`` for work-pool based deployment (see ``docker/``)."""
