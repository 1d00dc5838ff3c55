"""Operations on a running or stopped server: the admin channel, reload, XEP-0227 import and export."""
