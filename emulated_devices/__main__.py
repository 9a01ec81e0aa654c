from emulated_devices.main import main

main()
