"""Victron D-Bus layer: publish ItemStores as BusItem services, talk to localsettings.

Modules: ``bus`` (which bus, connecting, burst-safe socket), ``variants`` (value <->
variant rules), ``busitem`` (raw-handler BusItem tree), ``service`` (ServiceExport),
``settings`` (SettingsClient), ``localsettings`` (embedded com.victronenergy.settings).
"""
