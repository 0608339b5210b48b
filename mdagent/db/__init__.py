"""Storage: the embedded server, migrations, partitions and the COPY writer."""
