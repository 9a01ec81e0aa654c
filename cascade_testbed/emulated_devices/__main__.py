from cascade_testbed.emulated_devices.main import main

main()
