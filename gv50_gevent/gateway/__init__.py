"""The TCP side: StreamServer, one DeviceSession per connection, the connection registry."""
