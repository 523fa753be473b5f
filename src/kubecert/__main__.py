from kubecert.cli import main

main()
