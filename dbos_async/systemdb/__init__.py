"""The system database: pool, named queries, migrations, and one module per table."""
