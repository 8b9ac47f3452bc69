"""What runs in the hub: settings wiring, spawner, form, port callback, authenticator."""
