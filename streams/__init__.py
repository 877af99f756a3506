"""Herald's Faust app, settings, topic catalog, Avro codec and the `herald` CLI."""
