"""Client-to-server streams: negotiation (STARTTLS, SASL, bind, resume) and the bound session."""
