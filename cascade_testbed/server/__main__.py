from cascade_testbed.server.main import main

main()
