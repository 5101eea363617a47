"""Fakes of the issuers brain trusts (a foreign JWT issuer, OpenID Connect providers); the mail
providers' fakes ship with brain itself, in brain.testing.fakes."""
