"""Finding devices: serial and network scans, mDNS, and the GUI's management contract.

``probe`` asks one unit who it is (read-only), ``serialscan`` / ``netscan`` walk a port or
networks, ``devlist`` keeps the saved device list the way the GUI edits it, ``manager``
ties them to the running supervisor and the ``com.victronenergy.modbusclient.<port>``
service (``mbclient.dbus.management``), ``mdns`` browses for Victron network meters and
``command`` is ``mbclient --scan``.
"""
