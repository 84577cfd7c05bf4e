"""ModSecurity's audit log formats: bytes of one entry -> Event. Pure: no I/O."""
