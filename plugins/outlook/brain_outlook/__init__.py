"""Outlook / Microsoft Graph mail provider for brain (msal)."""
